"""Command line: argument parsing, output mode, exit codes. Knows nothing of how images are built.

`pybuild -t myapp .` is `pybuild build -t myapp .`: that is how docker users type it.
User mistakes print one line and exit non-zero; only `--debug` shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pybuild import __version__
from pybuild.errors import DockerfileError, NeedsRootError, PybuildError

DEFAULT_ROOT = "/var/lib/pybuild"

Handler = Callable[[argparse.Namespace], int]


def _store(args: argparse.Namespace) -> Any:
    from pybuild.store import Store

    return Store(Path(args.root))


def _kv(values: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not k:
            raise PybuildError(f"invalid {what} {v!r}: expected KEY=VALUE")
        if not sep:
            # docker: `--build-arg NAME` takes the value from the environment, if set
            if k in os.environ:
                out[k] = os.environ[k]
            continue
        out[k] = val
    return out


# ----- build -------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    from pybuild.build.mounts import parse_secret_flag
    from pybuild.build.solver import BuildOptions, Solver, summary_of
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
        from pybuild.build.solver import host_arch

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
        tags=list(args.tag or []), build_args=_kv(args.build_arg, "--build-arg"),
        target=args.target, no_cache=args.no_cache, no_cache_filter=list(args.no_cache_filter or []),
        network=args.network, secrets={s.id: s for s in map(parse_secret_flag, args.secret or [])},
        labels=_kv(args.label, "--label"), compression=args.compression,
        source_date_epoch=epoch, explain=args.explain)
    if args.check:
        plan = _check(opts)
        print(stages.describe(plan))
        return 0
    if os.geteuid() != 0:
        raise NeedsRootError("building needs root (overlay mounts and runc): run pybuild as root")
    progress = make_progress(mode)
    if progress.__class__.__name__.lower().startswith("plain"):
        opts.explain = True
    start = time.monotonic()
    try:
        solver = Solver(opts, progress)
        solver.load()
        result = solver.build(_store(args))
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
            "duration_seconds": round(time.monotonic() - start, 3)}, indent=2) + "\n")
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
def cmd_import(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.reference import parse_reference

    src = Path(args.tarball)
    if not src.is_file():
        raise PybuildError(f"{args.tarball}: no such file")
    store = _store(args)
    desc = image.import_rootfs(store, src, parse_reference(args.tag).familiar)
    print(store.read_json(desc.digest)["config"]["digest"])
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from pybuild import image

    store = _store(args)
    rows = []
    for name, desc in sorted(store.list_tags().items()):
        img = image.load(store, name)
        repo, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
        size = sum(d.size for d in img.layers)
        rows.append((repo, tag, img.config_desc.digest.split(":")[1][:12],
                     img.config.get("created", "")[:19].replace("T", " "), _human(size)))
    if args.quiet:
        for r in rows:
            print(r[2])
        return 0
    _table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pybuild import image

    store = _store(args)
    out = []
    for name in args.names:
        img = image.load(store, name)
        out.append({"Id": img.config_desc.digest, "RepoTags": [
            t for t, d in store.list_tags().items() if d.digest == img.manifest_desc.digest],
            "ManifestDigest": img.manifest_desc.digest, "Manifest": img.manifest,
            "Config": img.config})
    print(json.dumps(out, indent=2))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from pybuild import image
    from pybuild.reference import parse_reference

    store = _store(args)
    img = image.load(store, args.source)
    with store.lock():
        store.set_tag(parse_reference(args.target).familiar, img.manifest_desc)
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    from pybuild.reference import parse_reference

    store = _store(args)
    status = 0
    for name in args.names:
        with store.lock():
            desc = store.remove_tag(parse_reference(name).familiar)
        if desc is None:
            print(f"error: no such image: {name}", file=sys.stderr)
            status = 1
        else:
            print(f"Untagged: {parse_reference(name).familiar}")
    return status


def cmd_save(args: argparse.Namespace) -> int:
    from pybuild import image

    store = _store(args)
    for n in args.names:
        image.load(store, n)  # a clear error before anything is written
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if args.format == "oci":
            image.save_oci_archive(store, args.names, tmp)
        else:
            image.save_docker_archive(store, args.names, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return 0


# ----- parser --------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}"


def _table(headers: list[str], rows: list[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    for r in [headers] + [list(map(str, r)) for r in rows]:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def build_parser() -> argparse.ArgumentParser:
    def globals_(root: Any, debug: Any) -> argparse.ArgumentParser:
        g = argparse.ArgumentParser(add_help=False)
        g.add_argument("--root", default=root,
                       help=f"store directory (env PYBUILD_ROOT; default {DEFAULT_ROOT})")
        g.add_argument("--debug", action="store_true", default=debug,
                       help="show tracebacks on errors")
        return g

    # Subcommands accept the global options too; SUPPRESS keeps them from overriding
    # a value given before the subcommand.
    common = globals_(argparse.SUPPRESS, argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="pybuild", parents=[globals_(os.environ.get("PYBUILD_ROOT", DEFAULT_ROOT), False)],
        description="A daemonless container image builder: Dockerfile in, OCI image out. "
                    "`pybuild -t NAME DIR` is short for `pybuild build -t NAME DIR`.")
    p.add_argument("--version", action="version", version=f"pybuild {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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
    b.set_defaults(func=cmd_build)

    i = sub.add_parser("import", parents=[common], help="import a rootfs tarball as a one-layer image",
                       description="Make a one-layer image from a root filesystem tarball "
                                   "(plain, gzip, xz or zstd), e.g. from mmdebstrap.")
    i.add_argument("tarball")
    i.add_argument("tag")
    i.set_defaults(func=cmd_import)

    im = sub.add_parser("images", parents=[common], help="list tagged images",
                        description="List the tagged images in the store.")
    im.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    im.set_defaults(func=cmd_images)

    ins = sub.add_parser("inspect", parents=[common], help="show an image as JSON",
                         description="Print the manifest and config of images (by tag or ID).")
    ins.add_argument("names", nargs="+", metavar="IMAGE")
    ins.set_defaults(func=cmd_inspect)

    t = sub.add_parser("tag", parents=[common], help="add a name to an image",
                       description="Create the tag TARGET that refers to SOURCE.")
    t.add_argument("source", metavar="SOURCE")
    t.add_argument("target", metavar="TARGET")
    t.set_defaults(func=cmd_tag)

    r = sub.add_parser("rmi", parents=[common], help="remove image tags",
                       description="Remove tags; blobs are freed by `pybuild cache prune`.")
    r.add_argument("names", nargs="+", metavar="IMAGE")
    r.set_defaults(func=cmd_rmi)

    s = sub.add_parser("save", parents=[common], help="write images to an archive",
                       description="Save images as a docker-archive (for `docker load` / "
                                   "`podman load`) or an OCI archive.")
    s.add_argument("names", nargs="+", metavar="IMAGE")
    s.add_argument("-o", "--output", required=True, metavar="FILE")
    s.add_argument("--format", choices=["docker", "oci"], default="docker")
    s.set_defaults(func=cmd_save)
    return p


COMMANDS = {"build", "import", "images", "inspect", "tag", "rmi", "save"}


def _normalise(argv: list[str]) -> list[str]:
    """Insert `build` when no subcommand is named (`pybuild -t x .`)."""
    skip_next = False
    for a in argv:
        if skip_next:
            skip_next = False
            continue
        if a == "--root":
            skip_next = True
            continue
        if a.startswith("--root=") or a == "--debug":
            continue
        if a in COMMANDS or a in ("-h", "--help", "--version"):
            return argv
        return ["build"] + argv
    return argv


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = _normalise(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except DockerfileError as e:
        if args.debug:
            traceback.print_exc()
        name = getattr(args, "file", None) or "Dockerfile"
        print(str(e.with_file(name) if e.filename == "Dockerfile" else e), file=sys.stderr)
        return e.exit_code
    except PybuildError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
