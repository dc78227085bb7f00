"""`pybuild build`: the command line of the builder."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pybuild.solver.remote_cache import parse_cache_spec
from pybuild.cli.common import key_values, open_store
from pybuild.cli.registry import add_tls_flags, client_from_args
from pybuild.errors import NeedsRootError, PybuildError


def cmd_build(args: argparse.Namespace) -> int:
    from pybuild import sources

    from pybuild.solver import named_contexts

    specs = [named_contexts.parse_build_context(v) for v in args.build_context or []]
    with contextlib.ExitStack() as stack:
        prep = stack.enter_context(sources.prepare(args.context, args.file, sys.stdin.buffer))
        args.file = prep.name if args.file else None  # what errors call it (never "-")
        args.named_contexts = named_contexts.prepare(specs, stack)
        args.agents = None
        if args.ssh:
            from pybuild.solver.ssh import Agents, parse_ssh_flag

            args.agents = Agents({s.id: s for s in map(parse_ssh_flag, args.ssh)})
            stack.callback(args.agents.close)
        return _build(args, prep.context, prep.dockerfile, prep.name)


def _build(args: argparse.Namespace, context: Path, dockerfile: Path, name: str) -> int:
    from pybuild.solver.mounts import parse_secret_flag
    from pybuild.solver.solver import BuildOptions, Solver, summary_of
    from pybuild.dockerfile import stages
    from pybuild.progress import make_progress

    if args.platform:
        from pybuild.platforms import host_arch, is_host

        if not all(is_host(p) for p in args.platform.split(",")):
            raise PybuildError(f"platform {args.platform} is not supported: pybuild builds for the "
                               f"host platform linux/{host_arch()} only")
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        epoch = int(sde) if sde else None
    except ValueError:
        raise PybuildError(f"SOURCE_DATE_EPOCH must be an integer, got {sde!r}") from None
    from pybuild.solver import exporters, run_options

    outputs = [exporters.parse_output(v) for v in args.output or []]
    exporters.check_outputs(outputs, list(args.tag or []))
    mode = "quiet" if args.quiet else (args.progress or os.environ.get("PYBUILD_PROGRESS") or "auto")
    opts = BuildOptions(
        context=context, dockerfile=dockerfile, dockerfile_name=name,
        tags=exporters.store_tags(outputs, list(args.tag or [])), build_args=key_values(args.build_arg, "--build-arg"),
        target=args.target, no_cache=args.no_cache, no_cache_filter=list(args.no_cache_filter or []),
        network=args.network, secrets={s.id: s for s in map(parse_secret_flag, args.secret or [])},
        labels=key_values(args.label, "--label"), compression=args.compression,
        source_date_epoch=epoch, explain=args.explain, pull=args.pull,
        cache_from=[parse_cache_spec(v, "--cache-from") for v in args.cache_from or []],
        cache_to=[parse_cache_spec(v, "--cache-to") for v in args.cache_to or []],
        registry=lambda: client_from_args(args), jobs=args.jobs, allow=list(args.allow or []),
        contexts=args.named_contexts,
        extra_hosts=[run_options.parse_add_host(v) for v in args.add_host or []],
        ulimits=[run_options.parse_ulimit(v) for v in args.ulimit or []],
        shm_size=run_options.parse_shm_size(args.shm_size) if args.shm_size else None,
        ssh=args.agents)
    if args.push and not opts.tags:
        raise PybuildError("--push needs at least one -t NAME to push to")
    if args.check:
        plan = _check(opts)
        print(stages.describe(plan))
        return 0
    NeedsRootError.require("building")
    progress = make_progress(mode)
    if type(progress).__name__ in ("PlainProgress", "RawJSONProgress"):
        opts.explain = True  # logs and event streams always say why a step was rebuilt
    start = time.monotonic()
    try:
        solver = Solver(opts, progress)
        solver.load()
        result = solver.build(open_store(args))
        if outputs:
            _export_outputs(args, progress, result, outputs)
        progress.summary(summary_of(result, time.monotonic() - start))
    finally:
        progress.close()
    if args.iidfile:
        Path(args.iidfile).write_text(result.image_id)
    if args.metadata_file:
        Path(args.metadata_file).write_text(json.dumps({
            "containerimage.config.digest": result.image_id,
            "containerimage.digest": result.manifest.digest,
            "image.name": ",".join(result.tags),
            "steps_run": result.steps_run, "steps_cached": result.steps_cached,
            "duration_seconds": round(time.monotonic() - start, 3),
            "steps": result.steps}, indent=2) + "\n")
    if args.push:
        from pybuild import registry

        store = open_store(args)
        for tag in result.tags:
            digest = registry.push(store, tag, tag, client=client_from_args(args))
            print(f"pushed {tag}: {digest}", file=sys.stderr)
    if not any(o.to_stdout for o in outputs):
        progress.result_line(result.image_id)
    return 0


def _export_outputs(args: argparse.Namespace, progress: Any, result: Any, outputs: list[Any]) -> None:
    """Hand the built image to the -o exporters (pybuild.solver.exporters)."""
    from pybuild import image
    from pybuild.solver import exporters

    store = open_store(args)
    counter = iter(range(1, 1000))

    def report(title: str) -> Any:
        vid = f"output-{next(counter)}"
        progress.vertex_started(vid, title)
        return lambda: progress.vertex_done(vid)

    def push(name: str) -> str:
        from pybuild import registry

        return str(registry.push(store, name, name, client=client_from_args(args)))

    for message in exporters.export(store, image.load(store, result.manifest.digest), outputs,
                                    list(args.tag or []), push=push, report=report):
        print(message, file=sys.stderr)


def _check(opts: Any) -> Any:
    """Parse and plan without building: `pybuild build --check`."""
    from pybuild.dockerfile import parse, stages

    try:
        text = opts.dockerfile.read_text()
    except OSError as e:
        raise PybuildError(f"failed to read {opts.dockerfile_name}: {e.strerror}") from None
    return stages.plan(parse(text), opts.build_args, opts.target)


# ----- images ------------------------------------------------------------------------
def register(sub: Any, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser("build", parents=[common], help="build an image from a Dockerfile",
                       description="Build an image from a Dockerfile and a context directory, "
                                   "as `docker build` does.")
    b.add_argument("context", metavar="CONTEXT",
                   help="build context: a directory, - (a tar on stdin, or a Dockerfile with no "
                        "context), a git URL (URL#REF:SUBDIR) or an http(s) tarball URL")
    b.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]",
                   help="name the result (repeatable)")
    b.add_argument("-f", "--file", metavar="PATH",
                   help="Dockerfile (default: CONTEXT/Dockerfile; - reads it from stdin; "
                        "inside the context for remote and stdin contexts)")
    b.add_argument("--build-arg", action="append", metavar="KEY=VALUE",
                   help="set a build-time variable (repeatable)")
    b.add_argument("--target", metavar="STAGE", help="build only up to this stage")
    b.add_argument("--no-cache", action="store_true", help="rebuild every step")
    b.add_argument("--no-cache-filter", action="append", metavar="STAGE",
                   help="rebuild the steps of these stages only (repeatable)")
    b.add_argument("--network", choices=["host", "none", "default"], default="host",
                   help="network for RUN steps (default: host)")
    b.add_argument("--secret", action="append", metavar="id=ID,src=PATH|env=VAR",
                   help="expose a secret to RUN --mount=type=secret (repeatable)")
    b.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="add an image label (repeatable)")
    b.add_argument("--iidfile", metavar="FILE", help="write the image ID to FILE")
    b.add_argument("--metadata-file", metavar="FILE", help="write build metadata (JSON) to FILE")
    b.add_argument("--platform", metavar="PLATFORM",
                   help="target platform; only the host's (e.g. linux/amd64) is supported")
    b.add_argument("--progress", choices=["auto", "tty", "plain", "quiet", "rawjson"],
                   help="output mode (env PYBUILD_PROGRESS; default auto)")
    b.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    b.add_argument("--compression", choices=["gzip", "zstd"], default="gzip",
                   help="layer compression (default gzip)")
    b.add_argument("--explain", action="store_true",
                   help="say why each rebuilt step missed the cache (always on with --progress=plain)")
    b.add_argument("--check", action="store_true",
                   help="parse and plan only: print stages and steps, build nothing")
    b.add_argument("--pull", action="store_true",
                   help="always look for a newer base image in its registry")
    b.add_argument("--push", action="store_true", help="push every -t name after the build")
    b.add_argument("-o", "--output", action="append", metavar="type=TYPE[,dest=PATH][,name=N]",
                   help="where the result goes (repeatable): type=local,dest=DIR (or just DIR), "
                        "type=tar,dest=FILE (or - for stdout), type=oci,dest=FILE, "
                        "type=docker[,dest=FILE], type=image[,name=N][,push=true], "
                        "type=registry,name=N; default: the store, tagged with -t")
    b.add_argument("--cache-from", action="append", metavar="type=registry,ref=REF",
                   help="use build cache exported to a registry (repeatable)")
    b.add_argument("--cache-to", action="append", metavar="type=registry,ref=REF[,mode=min|max]",
                   help="export the build cache to a registry (mode=max: every stage)")
    b.add_argument("-j", "--jobs", type=_positive_int, metavar="N",
                   help="steps that run at once: independent stages build in parallel "
                        "(default: the number of CPUs)")
    b.add_argument("--allow", action="append", metavar="ENTITLEMENT",
                   help="grant an entitlement: security.insecure lets RUN --security=insecure "
                        "run privileged (repeatable)")
    b.add_argument("--build-context", action="append", metavar="NAME=DIR|docker-image://REF|...",
                   help="a named context replacing FROM NAME, COPY --from=NAME and --mount "
                        "from=NAME (repeatable): a directory, docker-image://REF, "
                        "oci-layout://PATH[:TAG|@DIGEST], a git URL or an http(s) tarball URL")
    b.add_argument("--ssh", action="append", metavar="default|ID=SOCKET|KEY[,...]",
                   help="forward an ssh agent (or keys) to RUN --mount=type=ssh (repeatable); "
                        "default is $SSH_AUTH_SOCK")
    b.add_argument("--add-host", action="append", metavar="HOST:IP",
                   help="add a line to /etc/hosts of RUN steps (repeatable); IP may be "
                        "host-gateway (the host: 127.0.0.1, or PYBUILD_HOST_GATEWAY_IP)")
    b.add_argument("--ulimit", action="append", metavar="NAME=SOFT[:HARD]",
                   help="a resource limit for RUN steps, e.g. nofile=1024:2048 (repeatable)")
    b.add_argument("--shm-size", metavar="SIZE",
                   help="size of /dev/shm in RUN steps, e.g. 128m (default 64m)")
    add_tls_flags(b)
    b.set_defaults(func=cmd_build)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n

