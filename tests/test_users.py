"""USER and --chown resolution through the image's /etc/passwd and /etc/group."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybuild.solver.users import resolve_chown, resolve_user
from pybuild.errors import PybuildError

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin

app:x:1000:1000::/home/app:/bin/sh
web:x:33:33::/var/www:/bin/sh
dup:x:1000:5::/:/bin/sh
"""
GROUP = """root:x:0:
staff:x:50:app,web
app:x:1000:
docker:x:999:web,app
video:x:44:
"""


@pytest.fixture()
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", (0, 0, [])),
        ("root", (0, 0, [])),
        ("app", (1000, 1000, [50, 999])),
        ("1000", (1000, 1000, [50, 999])),  # a uid with an entry gets its groups
        ("4242", (4242, 0, [])),  # no entry: gid 0
        ("app:video", (1000, 44, [])),  # explicit group: no supplementary groups
        ("web:1234", (33, 1234, [])),
        ("1000:1000", (1000, 1000, [])),  # BuildKit's numeric fast path
        ("5:7", (5, 7, [])),
    ],
)
def test_resolve_user(rootfs: Path, spec: str, expected: tuple[int, int, list[int]]) -> None:
    assert resolve_user(rootfs, spec) == expected


def test_resolve_user_errors(rootfs: Path) -> None:
    with pytest.raises(PybuildError, match="^unable to find user ghost: no matching entries in passwd file$"):
        resolve_user(rootfs, "ghost")
    with pytest.raises(PybuildError, match="unable to find group ghosts: no matching entries in group file"):
        resolve_user(rootfs, "app:ghosts")
    with pytest.raises(PybuildError, match="range"):
        resolve_user(rootfs, "-1")


def test_user_without_account_files(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "1234") == (1234, 0, [])
    with pytest.raises(PybuildError, match="unable to find user nobody"):
        resolve_user(tmp_path, "nobody")


def test_account_files_read_inside_rootfs(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("evil:x:77:77::/:/bin/sh\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").symlink_to(host / "passwd")  # absolute: resolved inside root
    with pytest.raises(PybuildError, match="unable to find user evil"):
        resolve_user(root, "evil")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1000", (1000, 1000)),  # BuildKit: a numeric user alone gives gid = uid
        ("app", (1000, 1000)),
        ("web", (33, 33)),
        ("web:staff", (33, 50)),
        ("web:7", (33, 7)),
        ("12:staff", (12, 50)),
        ("3:4", (3, 4)),
    ],
)
def test_resolve_chown(rootfs: Path, spec: str, expected: tuple[int, int]) -> None:
    assert resolve_chown(rootfs, spec) == expected


def test_resolve_chown_errors(rootfs: Path) -> None:
    for spec, message in [("ghost", "unable to find user ghost"), ("app:ghosts", "unable to find group ghosts"),
                          ("", "invalid --chown"), ("app:", "invalid --chown")]:
        with pytest.raises(PybuildError, match=message):
            resolve_chown(rootfs, spec)
