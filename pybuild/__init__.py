"""pybuild: a daemonless container image builder. The stable Python API is named here.

    import pybuild
    img = pybuild.build(".", tags=["app"], store=pybuild.Store("/var/lib/pybuild"))

Names load on first use, so `import pybuild` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Container", "DockerfileError", "Event", "Image", "NeedsRootError", "PybuildError",
           "StepError", "Store", "build", "load_archive", "open_store", "pull", "push", "run", "save"]

if TYPE_CHECKING:
    from pybuild.api import (Container, Event, Image, build, load_archive, open_store, pull, push, run,
                             save)
    from pybuild.errors import DockerfileError, NeedsRootError, PybuildError, StepError
    from pybuild.store import Store

_HOMES = {"Container": "pybuild.api", "run": "pybuild.api", "Event": "pybuild.api", "Image": "pybuild.api", "build": "pybuild.api",
          "open_store": "pybuild.api", "pull": "pybuild.api", "push": "pybuild.api",
          "save": "pybuild.api", "load_archive": "pybuild.api", "Store": "pybuild.store", "DockerfileError": "pybuild.errors",
          "NeedsRootError": "pybuild.errors", "PybuildError": "pybuild.errors",
          "StepError": "pybuild.errors"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'pybuild' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
