"""`pybuild build`: the command line of the builder."""

from __future__ import annotations

import argparse
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
    from pybuild.solver.mounts import parse_secret_flag
    from pybuild.solver.solver import BuildOptions, Solver, summary_of
    from pybuild.dockerfile import stages
    from pybuild.progress import make_progress

    context = Path(args.context)
    if not context.is_dir():
        raise PybuildError(f"unable to prepare context: path {args.context!r} not found")
    if args.file == "-":
        raise PybuildError("reading the Dockerfile from stdin (-f -) is not supported")
    dockerfile = Path(args.file) if args.file else context / "Dockerfile"
    name = args.file if args.file else "Dockerfile"
    if args.platform:
        from pybuild.solver.solver import host_arch

        wanted = args.platform.split(",")
        if any(p.strip() not in (f"linux/{host_arch()}", host_arch()) for p in wanted):
            raise PybuildError(f"platform {args.platform} is not supported: pybuild builds for the "
                               f"host platform linux/{host_arch()} only")
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        epoch = int(sde) if sde else None
    except ValueError:
        raise PybuildError(f"SOURCE_DATE_EPOCH must be an integer, got {sde!r}") from None
    mode = "quiet" if args.quiet else (args.progress or os.environ.get("PYBUILD_PROGRESS") or "auto")
    opts = BuildOptions(
        context=context, dockerfile=dockerfile, dockerfile_name=name,
        tags=list(args.tag or []), build_args=key_values(args.build_arg, "--build-arg"),
        target=args.target, no_cache=args.no_cache, no_cache_filter=list(args.no_cache_filter or []),
        network=args.network, secrets={s.id: s for s in map(parse_secret_flag, args.secret or [])},
        labels=key_values(args.label, "--label"), compression=args.compression,
        source_date_epoch=epoch, explain=args.explain, pull=args.pull,
        cache_from=[parse_cache_spec(v, "--cache-from") for v in args.cache_from or []],
        cache_to=[parse_cache_spec(v, "--cache-to") for v in args.cache_to or []],
        registry=lambda: client_from_args(args), allow=_entitlements(args.allow))
    if args.push and not opts.tags:
        raise PybuildError("--push needs at least one -t NAME to push to")
    if args.check:
        plan = _check(opts)
        print(stages.describe(plan))
        return 0
    if os.geteuid() != 0:
        raise NeedsRootError("building needs root (overlay mounts and runc): run pybuild as root")
    progress = make_progress(mode)
    if type(progress).__name__ in ("PlainProgress", "RawJSONProgress"):
        opts.explain = True  # logs and event streams always say why a step was rebuilt
    start = time.monotonic()
    try:
        solver = Solver(opts, progress)
        solver.load()
        result = solver.build(open_store(args))
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
    progress.result_line(result.image_id)
    return 0


def _check(opts: Any) -> Any:
    """Parse and plan without building: `pybuild build --check`."""
    from pybuild.dockerfile import parse, stages

    try:
        text = opts.dockerfile.read_text()
    except OSError as e:
        raise PybuildError(f"failed to read {opts.dockerfile_name}: {e.strerror}") from None
    return stages.plan(parse(text), opts.build_args, opts.target)


# ----- images ------------------------------------------------------------------------
def _entitlements(values: list[str] | None) -> list[str]:
    """--allow values (BuildKit's entitlement names; network.host is always granted here)."""
    out = []
    for v in values or []:
        for item in v.split(","):
            if item not in ("security.insecure", "network.host"):
                raise PybuildError(f"invalid --allow value {item!r}: security.insecure or network.host")
            out.append(item)
    return out


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser("build", parents=[common], help="build an image from a Dockerfile",
                       description="Build an image from a Dockerfile and a context directory, "
                                   "as `docker build` does.")
    b.add_argument("context", help="build context directory")
    b.add_argument("-t", "--tag", action="append", metavar="NAME[:TAG]",
                   help="name the result (repeatable)")
    b.add_argument("-f", "--file", metavar="PATH", help="Dockerfile (default: CONTEXT/Dockerfile)")
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
    b.add_argument("--allow", action="append", metavar="ENTITLEMENT",
                   help="grant an entitlement: security.insecure lets RUN --security=insecure "
                        "run with every capability")
    b.add_argument("--pull", action="store_true",
                   help="always look for a newer base image in its registry")
    b.add_argument("--push", action="store_true", help="push every -t name after the build")
    b.add_argument("--cache-from", action="append", metavar="type=registry,ref=REF",
                   help="use build cache exported to a registry (repeatable)")
    b.add_argument("--cache-to", action="append", metavar="type=registry,ref=REF[,mode=min|max]",
                   help="export the build cache to a registry (mode=max: every stage)")
    add_tls_flags(b)
    b.set_defaults(func=cmd_build)

