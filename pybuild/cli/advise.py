"""`pybuild advise IMAGE`: what the image's layers cost and how to make them cheaper."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pybuild.cli.common import open_store
from pybuild.errors import PybuildError


def cmd_advise(args: argparse.Namespace) -> int:
    from pybuild import advise, sarif

    dockerfile_text = None
    name = args.file or "Dockerfile"
    context = Path(args.context) if args.context else None
    if context is not None and not context.is_dir():
        raise PybuildError(f"context {args.context!r} is not a directory")
    path = Path(args.file) if args.file else (context / "Dockerfile" if context else None)
    if path is not None:
        try:
            dockerfile_text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            if args.file:
                raise PybuildError(f"failed to read {args.file}: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
    store = open_store(args)
    result = advise.advise(store, args.image, dockerfile=dockerfile_text, dockerfile_name=name,
                           context=context)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    elif args.format == "sarif":
        print(json.dumps(sarif.from_advice(result.items, name if dockerfile_text else None),
                         indent=2))
    else:
        sys.stdout.write(advise.render_text(result))
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser("advise", parents=[common], help="say what an image's layers cost",
                       description="Read an image's layers and build-cache records and say what "
                                   "each Dockerfile line cost: bytes hidden by later layers, "
                                   "caches and leftovers, steps that re-run needlessly, root and "
                                   "secrets in the config, a context bigger than needed.")
    a.add_argument("image", help="image name or ID in the store")
    a.add_argument("-f", "--file", metavar="PATH",
                   help="the Dockerfile it was built from (for file:line; default "
                        "CONTEXT/Dockerfile when --context is given)")
    a.add_argument("--context", metavar="DIR",
                   help="the build context: also advise on directories it should ignore")
    a.add_argument("--format", choices=["text", "json", "sarif"], default="text",
                   help="output format (default text)")
    a.set_defaults(func=cmd_advise)
