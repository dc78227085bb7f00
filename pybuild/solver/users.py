"""USER and --chown resolution through the image's own /etc/passwd and /etc/group.

The files are read inside the rootfs with symlinks resolved as the container sees them, so
an image's `/etc/passwd -> /host/file` link cannot make pybuild read a host file.
The rules are runc's/BuildKit's (moby/sys/user GetExecUser, BuildKit's readUser).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pybuild import fs
from pybuild.errors import PybuildError

_MAX_ID = 2**31 - 1


@dataclass
class _Entry:
    name: str
    id: int
    primary_gid: int = 0
    members: tuple[str, ...] = ()


def _read_db(rootfs: Path, path: str) -> list[str]:
    """Lines of an account file in the rootfs; a missing file reads as empty."""
    try:
        with os.fdopen(fs.open_in_root(rootfs, path), "rb") as f:
            return f.read().decode("utf-8", errors="surrogateescape").splitlines()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, fs.NotADirectory):
        return []
    except fs.PathError as exc:
        raise PybuildError(f"cannot read {path} in the image: {exc.reason}") from None
    except OSError as exc:
        raise PybuildError(f"cannot read {path} in the image: {exc.strerror}") from None


def _atoi(text: str) -> int:
    """Go's lenient parse of passwd fields: a malformed number reads as 0."""
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _passwd(rootfs: Path) -> list[_Entry]:
    entries = []
    for line in _read_db(rootfs, "/etc/passwd"):
        line = line.strip()
        if not line:
            continue
        f = line.split(":") + [""] * 7
        entries.append(_Entry(f[0], _atoi(f[2]), _atoi(f[3])))
    return entries


def _groups(rootfs: Path) -> list[_Entry]:
    entries = []
    for line in _read_db(rootfs, "/etc/group"):
        line = line.strip()
        if not line:
            continue
        f = line.split(":") + [""] * 4
        members = tuple(m for m in f[3].split(",") if m)
        entries.append(_Entry(f[0], _atoi(f[2]), members=members))
    return entries


def _numeric(text: str) -> int | None:
    """An id written as a number (Go's Atoi accepts a sign); None for a name."""
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or not body.isascii():
        return None
    return int(text)


def _check_range(value: int) -> int:
    if not 0 <= value <= _MAX_ID:
        raise PybuildError(f"uids and gids must be in range 0-{_MAX_ID}")
    return value


def resolve_user(rootfs: Path, spec: str) -> tuple[int, int, list[int]]:
    """USER `name`, `uid`, `name:group` or `uid:gid` → (uid, gid, supplementary gids).

    Supplementary groups only come with the implicit form (no `:group`), from the groups
    listing the user by name; a numeric uid without a passwd entry runs with gid 0.

    No USER is uid 0 looked up like any other (BuildKit's executor/oci GetUser, since the
    CVE-2023-25173 fix): root also gets the groups that list `root`; when that lookup fails
    it is plain 0:0 without groups.
    """
    if not spec:
        try:
            return resolve_user(rootfs, "0")
        except PybuildError:
            return 0, 0, []
    user, _, group = spec.partition(":")
    uid_arg, gid_arg = _numeric(user), _numeric(group)
    if uid_arg is not None and gid_arg is not None and uid_arg >= 0 and gid_arg >= 0:
        # BuildKit's fast path: both numeric, no file is read and no extra groups apply.
        return _check_range(uid_arg), _check_range(gid_arg), []
    uid, gid, matched_name = 0, 0, ""
    if user:
        found = [e for e in _passwd(rootfs) if (e.id == uid_arg if uid_arg is not None else e.name == user)]
        if found:
            uid, gid, matched_name = found[0].id, found[0].primary_gid, found[0].name
        elif uid_arg is None:
            raise PybuildError(f"unable to find user {user}: no matching entries in passwd file")
        else:
            uid = _check_range(uid_arg)
    supplementary: list[int] = []
    if group:
        found = [e for e in _groups(rootfs) if (e.id == gid_arg if gid_arg is not None else e.name == group)]
        if found:
            gid = found[0].id
        elif gid_arg is None:
            raise PybuildError(f"unable to find group {group}: no matching entries in group file")
        else:
            gid = _check_range(gid_arg)
    elif matched_name:
        supplementary = [e.id for e in _groups(rootfs) if matched_name in e.members]
    return uid, gid, supplementary


def resolve_chown(rootfs: Path, spec: str) -> tuple[int, int]:
    """--chown=`user[:group]`: a numeric user alone gives gid = uid (BuildKit), a named user
    its primary group. An unknown name is an error here, where BuildKit silently used 0."""
    user, sep, group = spec.partition(":")
    if not user or (sep and not group):
        raise PybuildError(f"invalid --chown value {spec!r}: expected user[:group]")
    uid_arg = _numeric(user)
    if uid_arg is not None:
        uid = gid = _check_range(uid_arg)
    else:
        found = [e for e in _passwd(rootfs) if e.name == user]
        if not found:
            raise PybuildError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = found[0].id, found[0].primary_gid
    if group:
        gid_arg = _numeric(group)
        if gid_arg is not None:
            gid = _check_range(gid_arg)
        else:
            groups = [e for e in _groups(rootfs) if e.name == group]
            if not groups:
                raise PybuildError(f"unable to find group {group}: no matching entries in group file")
            gid = groups[0].id
    return uid, gid
