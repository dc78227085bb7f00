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

from pybuild.cli.common import key_values, open_store
from pybuild.cli.registry import add_tls_flags, client_from_args
from pybuild.errors import NeedsRootError, PybuildError
from pybuild.solver.remote_cache import parse_cache_spec


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
    from pybuild.progress import make_progress
    from pybuild.solver.mounts import parse_secret_flag
    from pybuild.solver.solver import BuildOptions

    from pybuild.platforms import parse_platforms

    plats = parse_platforms(args.platform) if args.platform else []
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
        ssh=args.agents, platform=plats[0] if len(plats) == 1 else None)
    if args.push and not opts.tags:
        raise PybuildError("--push needs at least one -t NAME to push to")
    from pybuild.attest.for_build import AttestOptions, parse_provenance, parse_sbom

    attest_opts = AttestOptions(parse_sbom(args.sbom), parse_provenance(args.provenance))
    call = parse_call(args)
    if call.name != "build":
        return _call(call, opts, args)
    NeedsRootError.require("building")
    from pybuild import api

    progress = make_progress(mode)
    if type(progress).__name__ in ("PlainProgress", "RawJSONProgress"):
        opts.explain = True  # logs and event streams always say why a step was rebuilt
    start = time.monotonic()
    result = api.solve(opts, progress, open_store(args), platforms=plats, attest=attest_opts,
                       before=lambda plan: report_checks(plan, opts, args, progress),
                       after=(lambda r: _export_outputs(args, progress, r, outputs))
                       if outputs else None,
                       keep_image=not exporters.stores_no_image(outputs))
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
        from pybuild.cli.registry import registry_kwargs

        for tag in result.tags:
            digest = api.push(tag, store=open_store(args), **registry_kwargs(args))
            print(f"pushed {tag}: {digest}", file=sys.stderr)
    if not any(o.to_stdout for o in outputs):
        progress.result_line(result.image_id)
        _advice_line(args, opts, result, mode)
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
        from pybuild import api
        from pybuild.cli.registry import registry_kwargs

        return api.push(name, store=store, **registry_kwargs(args))

    for message in exporters.export(store, image.load(store, result.manifest.digest), outputs,
                                    list(args.tag or []), push=push, report=report):
        print(message, file=sys.stderr)


def _advice_line(args: argparse.Namespace, opts: Any, result: Any, mode: str) -> None:
    """One line of `pybuild advise` after a build (not in quiet or rawjson output)."""
    if mode in ("quiet", "rawjson"):
        return
    from pybuild import advise

    try:
        text = _read_dockerfile(opts)
        found = advise.advise(open_store(args), result.image_id, dockerfile=text,
                              dockerfile_name=opts.dockerfile_name, context=Path(opts.context),
                              built_layers_only=True)
    except PybuildError as e:
        print(f"advice: not available: {e}", file=sys.stderr)
        return
    line = found.summary()
    if found.items:
        line = line.replace(f"`pybuild advise {result.image_id}`",
                            f"`pybuild advise {(result.tags or [result.image_id])[0]}"
                            f" --context {opts.context}`")
    print(line, file=sys.stderr)


def _read_dockerfile(opts: Any) -> str:
    try:
        return str(opts.dockerfile.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise PybuildError(f"failed to read {opts.dockerfile_name}: "
                           f"{getattr(e, 'strerror', None) or e}") from None


def _plan(opts: Any) -> Any:
    """Parse and plan without building."""
    from pybuild.dockerfile import parse, stages

    return stages.plan(parse(_read_dockerfile(opts)), opts.build_args, opts.target,
                       opts.platform)


# ----- --check and --call ------------------------------------------------------------
CALLS = ("build", "check", "outline", "targets")
FORMATS = ("text", "json", "sarif")


class Call:
    """`--call NAME[,format=F]` (buildx's syntax); `--check` is `--call check`."""

    def __init__(self, name: str, fmt: str) -> None:
        self.name, self.format = name, fmt


def parse_call(args: argparse.Namespace) -> Call:
    name = "check" if args.check else "build"
    fmt = args.format
    if args.call:
        if args.check and not args.call.startswith("check"):
            raise PybuildError("--check and --call are mutually exclusive")
        first, *opts = [p.strip() for p in args.call.split(",")]
        if first not in CALLS:
            raise PybuildError(f"invalid --call {args.call!r}: expected one of "
                               + ", ".join(CALLS))
        name = first
        for opt in opts:
            key, _, value = opt.partition("=")
            if key != "format" or value not in FORMATS:
                raise PybuildError(f"invalid --call option {opt!r}: expected format=text|json|sarif")
            fmt = value
    allowed = {"build": (), "check": FORMATS, "targets": ("text", "json"), "outline": ("text",)}
    if fmt is not None and fmt not in allowed[name]:
        what = "a build" if name == "build" else f"--call {name}"
        raise PybuildError(f"--format {fmt} does not apply to {what} (it is for --check, "
                           "--call check and --call targets)")
    return Call(name, fmt or "text")


def _image_config_reader(args: argparse.Namespace) -> Any:
    """Base-image configs from the store, read-only; None when there is no store to read."""
    root = Path(args.root)
    if not (root / "index.json").exists() and not (root / "blobs").is_dir():
        return None
    try:
        store = open_store(args)
    except (OSError, PybuildError):
        return None
    from pybuild import image as imagemod

    def config(name: str) -> Any:
        try:
            return imagemod.load(store, name).config
        except (OSError, PybuildError, ValueError):
            return None
    return config


def _ignore_patterns(opts: Any) -> list[str] | None:
    from pybuild.context import read_ignore_file

    specific = Path(str(opts.dockerfile) + ".dockerignore")
    path = specific if specific.is_file() else Path(opts.context) / ".dockerignore"
    try:
        return read_ignore_file(path.read_text(encoding="utf-8", errors="surrogateescape"))
    except OSError:
        return None


def evaluate_checks(opts: Any, args: argparse.Namespace, reachable: set[int] | None) -> Any:
    """The checks of the build's Dockerfile with what the host knows (store, .dockerignore)."""
    from pybuild.dockerfile import checks, parse

    text = _read_dockerfile(opts)
    df = parse(text, opts.dockerfile_name)
    report = checks.evaluate(df, build_args=opts.build_args, ignore_patterns=_ignore_patterns(opts),
                             image_config=_image_config_reader(args), reachable=reachable)
    return report, text


def report_checks(plan: Any, opts: Any, args: argparse.Namespace, progress: Any) -> None:
    """A normal build: every warning through the progress stream; error=true stops here."""
    report, _ = evaluate_checks(opts, args, {s.index for s in plan.stages})
    for w in report.warnings:
        progress.warning(w.short(), w.to_dict())
    violation = report.violation()
    if violation is not None:
        raise violation.with_file(opts.dockerfile_name)


def _call(call: Call, opts: Any, args: argparse.Namespace) -> int:
    from pybuild.dockerfile import stages

    if call.name == "outline":
        plan = _plan(opts)
        print(outline_text(plan, opts), end="")
        print(stages.describe(plan))
        return 0
    if call.name == "targets":
        from pybuild.dockerfile import parse

        df = parse(_read_dockerfile(opts), opts.dockerfile_name)
        rows = targets(df)
        if call.format == "json":
            print(json.dumps({"targets": rows}, indent=2))
        else:
            print(_tabwrite([["TARGET", "DESCRIPTION"]] + [
                [(r["name"] or "") + (" (default)" if r.get("default") and r["name"] else "")
                 if r["name"] or not r.get("default") else "(default)",
                 r.get("description", "")] for r in rows], 1), end="")
        return 0
    return _run_check(call, opts, args)


def _run_check(call: Call, opts: Any, args: argparse.Namespace) -> int:
    """`--check`: BuildKit's lint subrequest. Status 1 when anything was found (its
    result.statuscode), the error last; `error=true` turns warnings into that error."""
    from pybuild.dockerfile import checks

    report, text = evaluate_checks(opts, args, None)
    error = report.error or report.violation()
    if error is not None:
        error = error.with_file(opts.dockerfile_name)
    if call.format == "json":
        print(json.dumps(checks.render_json(report, text, opts.dockerfile_name), indent=2))
    elif call.format == "sarif":
        from pybuild import sarif

        print(json.dumps(sarif.from_checks(report, opts.dockerfile_name), indent=2))
    else:
        sys.stdout.write(checks.render_text(report, text, opts.dockerfile_name))
        if error is not None and report.warnings:
            print()
    if error is not None:
        raise error
    return 1 if report.warnings else 0


def _doc_comment(comments: list[str], name: str | None) -> str:
    """BuildKit's getDocComment: the comment line that starts with the name and a space."""
    if not name:
        return ""
    for line in comments:
        if line.startswith(name + " "):
            return line[len(name) + 1:]
    return ""


def targets(df: Any) -> list[dict[str, Any]]:
    """`--call targets`: every stage with its description, the last one the default."""
    from pybuild.dockerfile import instructions as ins

    rows: list[dict[str, Any]] = []
    froms = [n for n in df.nodes if n.name == "from"]
    for i, node in enumerate(froms):
        frm = ins.from_node(node)
        assert isinstance(frm, ins.From)
        raw_name = node.args[2] if len(node.args) == 3 else None
        row: dict[str, Any] = {"name": frm.name or ""}
        desc = _doc_comment(node.comments, raw_name)
        if desc:
            row["description"] = desc
        if i == len(froms) - 1:
            row["default"] = True
        row["base"] = frm.image
        if frm.platform:
            row["platform"] = frm.platform
        row["line"] = node.start_line
        rows.append(row)
    return rows


def _tabwrite(rows: list[list[str]], padding: int) -> str:
    """Go's tabwriter with minwidth 0 and space padding: every cell but the last is padded."""
    widths: dict[int, int] = {}
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths.get(i, 0), len(cell) + padding)
    return "".join("".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + r[-1] + "\n"
                   for r in rows)


def outline_text(plan: Any, opts: Any) -> str:
    """`--call outline`: BuildKit's outline (target, build args, secrets), then the plan."""
    from pybuild.dockerfile import instructions as ins
    from pybuild.dockerfile import parse

    df = parse(_read_dockerfile(opts), opts.dockerfile_name)
    froms = [n for n in df.nodes if n.name == "from"]
    t = plan.target
    out = ""
    node = froms[t.index]
    raw = node.args[2] if len(node.args) == 3 else None
    desc = _doc_comment(node.comments, raw)
    if t.name or desc:
        rows = [["TARGET:", t.name or "(default)"]] + ([["DESCRIPTION:", desc]] if desc else [])
        out += _tabwrite(rows, 1) + "\n"
    comments = {n.start_line: n.comments for n in df.nodes}
    args: dict[str, tuple[str, str]] = {}
    secrets: dict[str, bool] = {}
    meta = [ins.from_node(n) for n in df.nodes[:df.nodes.index(froms[0])]]
    for st in plan.stages:
        for i in [*meta, *st.instructions]:
            if isinstance(i, ins.Arg):
                for name, default in i.args:
                    if name in args and default is None:
                        continue
                    value = opts.build_args.get(name, default or "")
                    args[name] = (value, _doc_comment(comments.get(i.line, []), name))
            if isinstance(i, ins.Run):
                for m in i.mounts:
                    if m.type == "secret":
                        sid = m.id or (m.target or "").rsplit("/", 1)[-1]
                        secrets[sid] = secrets.get(sid, False) or m.required
    if args:
        out += _tabwrite([["BUILD ARG", "VALUE", "DESCRIPTION"]]
                         + [[k, v, d] for k, (v, d) in args.items()], 3) + "\n"
    if secrets:
        out += _tabwrite([["SECRET", "REQUIRED"]]
                         + [[k, "true" if r else ""] for k, r in secrets.items()], 3) + "\n"
    return out


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
                   help="target platform(s), comma-separated (linux/amd64,linux/arm64): "
                        "foreign architectures run under QEMU user emulation; several "
                        "make an OCI image index for the tag")
    b.add_argument("--progress", choices=["auto", "tty", "plain", "quiet", "rawjson"],
                   help="output mode (env PYBUILD_PROGRESS; default auto)")
    b.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    b.add_argument("--compression", choices=["gzip", "zstd"], default="gzip",
                   help="layer compression (default gzip)")
    b.add_argument("--explain", action="store_true",
                   help="say why each rebuilt step missed the cache (always on with --progress=plain)")
    b.add_argument("--check", action="store_true",
                   help="evaluate the build checks only, build nothing (= --call check); exit "
                        "status 1 when a check fires, as BuildKit's")
    b.add_argument("--call", metavar="check|outline|targets[,format=F]",
                   help="run a frontend method instead of building: check (the build checks), "
                        "outline (target, args, secrets and the step plan), targets (the stages "
                        "and their descriptions)")
    b.add_argument("--format", choices=list(FORMATS),
                   help="output of --check/--call: text (default), json or sarif")
    b.add_argument("--pull", action="store_true",
                   help="always look for a newer base image in its registry")
    b.add_argument("--push", action="store_true", help="push every -t name after the build")
    b.add_argument("--sbom", nargs="?", const="true", metavar="true|false",
                   help="attach an SPDX 2.3 SBOM attestation (dpkg, apk and Python packages of "
                        "the final image), as BuildKit stores it; see `pybuild sbom`")
    b.add_argument("--provenance", nargs="?", const="true", metavar="true|mode=min|mode=max",
                   help="attach SLSA v1 provenance: min (no build-arg values) or max (adds "
                        "build args, the Dockerfile and which step made which layer)")
    b.add_argument("-o", "--output", action="append", metavar="type=TYPE[,dest=PATH][,name=N]",
                   help="where the result goes (repeatable): type=local,dest=DIR (or just DIR), "
                        "type=tar,dest=FILE (or - for stdout), type=oci,dest=FILE, "
                        "type=docker[,dest=FILE], type=image[,name=N][,push=true], "
                        "type=registry,name=N; default: the store, tagged with -t; "
                        "with only local/tar outputs no image is stored (the cache stays)")
    b.add_argument("--cache-from", action="append", metavar="type=registry,ref=REF",
                   help="use build cache (repeatable): type=registry,ref=REF (also an image "
                        "pushed with an inline cache), or type=local,src=DIR[,tag=T] "
                        "(BuildKit's local cache format)")
    b.add_argument("--cache-to", action="append", metavar="type=registry,ref=REF[,mode=min|max]",
                   help="export the build cache (mode=max: every stage): type=registry,ref=REF, "
                        "type=local,dest=DIR[,tag=T] (BuildKit's local cache format, an OCI "
                        "layout), or type=inline (in the image config)")
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

