"""pytest fixtures for testing a project against its real image (entry point `pytest11`).

    def test_home(pybuild_image, pybuild_container):
        img = pybuild_image(".")                       # built once per session, with the cache
        web = pybuild_container(img, ports=[8000])
        assert b"Hello" in urllib.request.urlopen(web.url(8000)).read()

`pybuild_store` is the store they use: `--pybuild-root DIR`, else $PYBUILD_ROOT, else
/var/lib/pybuild, so repeated test runs reuse the build cache as repeated builds do.
Building and running need root; without it the fixtures skip the test with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pybuild", "pybuild: build and run the images under test")
    group.addoption("--pybuild-root", default=None, metavar="DIR",
                    help="store for the pybuild fixtures (default: $PYBUILD_ROOT or /var/lib/pybuild)")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("pybuild fixtures need root to build and run images (overlay mounts, runc)")


@pytest.fixture(scope="session")
def pybuild_store(request: pytest.FixtureRequest) -> Any:
    """The pybuild.Store the other fixtures build into."""
    from pybuild.api import open_store

    return open_store(request.config.getoption("--pybuild-root"))


ImageFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def pybuild_image(pybuild_store: Any) -> ImageFactory:
    """`pybuild_image(context, dockerfile=None, target=None, build_args=None, tags=(),
    secrets=None)`:
    builds once per distinct call in a session and returns the pybuild.Image."""
    from pybuild.api import build

    built: dict[tuple[Any, ...], Any] = {}

    def make(context: str | os.PathLike[str] = ".", *, dockerfile: str | None = None,
             target: str | None = None, build_args: Mapping[str, str] | None = None,
             tags: tuple[str, ...] = (), secrets: Mapping[str, str] | None = None) -> Any:
        _need_root()
        key = (str(Path(context).resolve()), dockerfile, target,
               tuple(sorted((build_args or {}).items())), tuple(tags),
               tuple(sorted((secrets or {}).items())))
        if key not in built:
            built[key] = build(context, dockerfile=dockerfile, target=target,
                               build_args=build_args, tags=tags, store=pybuild_store,
                               secrets=secrets)
        return built[key]

    return make


@pytest.fixture
def pybuild_container(pybuild_store: Any) -> Iterator[Callable[..., Any]]:
    """`pybuild_container(image, command=None, ports=(), env=None, network=None)`: a running
    container (detached) that is stopped and removed when the test ends."""
    started: list[Any] = []

    def start(image: Any, command: list[str] | None = None, *, ports: Any = (),
              env: Mapping[str, str] | None = None, network: str | None = None,
              wait: float = 30.0) -> Any:
        _need_root()
        c = image.run(command, detach=True, ports=ports, env=env, network=network)
        started.append(c)
        if ports:
            c.wait_for_port(next(iter(ports)), timeout=wait)
        return c

    yield start
    for c in reversed(started):
        try:
            c.remove(force=True)
        except Exception as e:  # teardown reports, never masks the test's own failure
            print(f"pybuild_container: could not remove {getattr(c, 'id', c)}: {e}")
