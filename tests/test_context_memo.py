"""The context digest memo kept in the store's database: it must never serve stale content.

Each "build" here is a fresh BuildContext with a fresh DigestMemo over the same SQLite
file, as two `pybuild build` processes would be. RACY_MARGIN_NS is set to 0 where a test
needs the memo to be trusted right after the files were written (otherwise every entry
younger than the margin is re-read, which would hide a memo that serves stale digests).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Pybuild

from pybuild import context
from pybuild.context import BuildContext, DigestMemo, FileManifest, manifest_digest


def _manifest(root: Path, db_path: Path) -> tuple[FileManifest, DigestMemo]:
    ctx = BuildContext(root, root / "Dockerfile")
    db = sqlite3.connect(db_path)
    memo = DigestMemo(lambda: db)
    ctx.memo = memo
    return ctx.manifest(ctx.resolve_sources(["."], 1)), memo


def _build(root: Path, db_path: Path) -> tuple[dict[str, str], DigestMemo]:
    """The entries a build's key covers, checked against the digest the key used."""
    manifest, memo = _manifest(root, db_path)
    entries = manifest.entries()
    assert manifest.digest == manifest_digest(entries)
    return entries, memo


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rows(db_path: Path) -> int:
    return int(sqlite3.connect(db_path).execute("SELECT count(*) FROM context_digests").fetchone()[0])


@pytest.fixture()
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(context, "RACY_MARGIN_NS", 0)
    monkeypatch.setattr(context, "_PROCESS_MEMO", DigestMemo())
    root = tmp_path / "ctx"
    (root / "sub").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "a.txt").write_bytes(b"aaaa")
    (root / "sub" / "b.txt").write_bytes(b"bbbb")
    return root


def _same_times_edit(path: Path, data: bytes) -> None:
    """Rewrite `path` in place keeping size and mtime; loop until the coarse ctime moves."""
    before = os.stat(path)
    assert len(data) == before.st_size
    for _ in range(100000):
        path.write_bytes(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.stat(path).st_ctime_ns != before.st_ctime_ns:
            break
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def test_memo_is_kept_and_served_across_builds(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    first, _ = _build(tree, db_path)
    assert first["a.txt"].endswith(_sha(b"aaaa"))
    assert _rows(db_path) == 3  # Dockerfile, a.txt, sub/b.txt
    # Poison the stored digest: if a second build shows it, the memo (not the file) was read.
    sqlite3.connect(db_path).execute("UPDATE context_digests SET sha256 = 'feed' WHERE size = 4 "
                                     "AND ino = ?", (os.stat(tree / "a.txt").st_ino,)).connection.commit()
    # (the digest of the unchanged walk is the filed one; its entries come from the memo)
    second = _manifest(tree, db_path)[0].entries()
    assert second["a.txt"].endswith(" feed")
    assert second["sub/b.txt"] == first["sub/b.txt"]


def test_same_size_same_mtime_edit_is_seen(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    _build(tree, db_path)
    _same_times_edit(tree / "a.txt", b"AAAA")
    after, _ = _build(tree, db_path)
    assert after["a.txt"].endswith(_sha(b"AAAA"))


def test_touch_d_back_to_the_old_mtime_is_seen(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    path = tree / "a.txt"
    old = os.stat(path)
    _build(tree, db_path)
    path.write_bytes(b"cccc")
    stamp = f"@{old.st_mtime_ns // 10**9}.{old.st_mtime_ns % 10**9:09d}"
    subprocess.run(["touch", "-d", stamp, str(path)], check=True)
    assert os.stat(path).st_mtime_ns == old.st_mtime_ns
    after, _ = _build(tree, db_path)
    assert after["a.txt"].endswith(_sha(b"cccc"))


def test_replaced_by_rename_is_seen(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    path = tree / "a.txt"
    old = os.stat(path)
    _build(tree, db_path)
    new = tree / ".a.new"
    new.write_bytes(b"dddd")
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.rename(new, path)
    after, _ = _build(tree, db_path)
    assert after["a.txt"].endswith(_sha(b"dddd"))


def test_inode_reuse_is_seen(tree: Path, tmp_path: Path) -> None:
    """A file deleted and another created, trying for the very same inode number."""
    db_path = tmp_path / "memo.db"
    path = tree / "a.txt"
    old = os.stat(path)
    _build(tree, db_path)
    reused = False
    for i in range(200):
        path.unlink()
        path.write_bytes(b"e%03d" % i)
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
        if os.stat(path).st_ino == old.st_ino:
            reused = True
            break
    data = path.read_bytes()
    after, _ = _build(tree, db_path)
    assert after["a.txt"].endswith(_sha(data)), f"inode reused: {reused}"


def test_symlink_retargeted_is_seen(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    link = tree / "link"
    link.symlink_to("a.txt")
    before, _ = _build(tree, db_path)
    assert before["link"].endswith(" a.txt")
    link.unlink()
    link.symlink_to("sub/b.txt")
    after, _ = _build(tree, db_path)
    assert after["link"].endswith(" sub/b.txt")


def test_racily_clean_entry_is_rehashed(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry read less than the margin after the file last changed is not trusted."""
    monkeypatch.setattr(context, "RACY_MARGIN_NS", 2_000_000_000)
    st = os.stat(tree / "a.txt")
    memo = DigestMemo()
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    memo.put(st, changed + 1_000_000, "stale")  # read 1 ms after the last change: racy
    assert memo.get(st) is None
    memo.put(st, changed + 3_000_000_000, "kept")  # read 3 s after it: safe
    assert memo.get(st) == "kept"
    # A timestamp in the future is never safely older than the read.
    tomorrow = time.time_ns() + 86400 * 10**9
    os.utime(tree / "a.txt", ns=(tomorrow, tomorrow))
    future = os.stat(tree / "a.txt")
    memo.put(future, future.st_ctime_ns + 3_000_000_000, "future")
    assert memo.get(future) is None


def test_file_changing_while_hashed_is_not_remembered(tree: Path, tmp_path: Path) -> None:
    """The stat a digest is filed under must still be the file's after the read."""
    st = os.stat(tree / "a.txt")
    (tree / "a.txt").write_bytes(b"zzzzzz")  # size moved between the walk and the read
    memo = DigestMemo()
    digest = context.file_sha256(tree / "a.txt", st, memo)
    assert digest == _sha(b"zzzzzz")
    assert memo.get(st) is None


def test_memo_flush_writes_nothing_when_nothing_changed(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    _build(tree, db_path)
    _, memo = _build(tree, db_path)
    assert memo._dirty == {}
    assert DigestMemo.forget_all(sqlite3.connect(db_path)) == 3


def _poison_manifests(db_path: Path) -> None:
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE context_manifests SET digest = 'sha256:' || printf('%064d', 0)")


def test_unchanged_walk_is_served_its_manifest_digest(tree: Path, tmp_path: Path) -> None:
    """A walk whose every entry stats as before gets the filed digest: no memo row is
    read, no line made (the entries come only when asked for, and are the real ones)."""
    db_path = tmp_path / "memo.db"
    first, _ = _manifest(tree, db_path)
    _poison_manifests(db_path)  # if the next walk shows it, the filed digest was served
    second, memo = _manifest(tree, db_path)
    assert second.digest == "sha256:" + "0" * 64
    assert memo._rows == {}, "a warm walk must not load the per-file memo"
    assert second.entries() == first.entries()


@pytest.mark.parametrize("change", ["edit", "same-times edit", "chmod", "touch", "new file",
                                    "delete", "rename", "symlink retarget"])
def test_any_change_of_an_entry_makes_the_manifest_again(tree: Path, tmp_path: Path,
                                                         change: str) -> None:
    db_path = tmp_path / "memo.db"
    (tree / "link").symlink_to("a.txt")
    _manifest(tree, db_path)
    _poison_manifests(db_path)
    a = tree / "a.txt"
    if change == "edit":
        a.write_bytes(b"aaaaa")
    elif change == "same-times edit":
        _same_times_edit(a, b"AAAA")
    elif change == "chmod":
        a.chmod(0o600)
    elif change == "touch":
        os.utime(a, ns=(0, 10**9))
    elif change == "new file":
        (tree / "sub" / "c.txt").write_bytes(b"c")
    elif change == "delete":
        (tree / "sub" / "b.txt").unlink()
    elif change == "rename":
        (tree / "sub" / "b.txt").rename(tree / "sub" / "B.txt")
    else:
        (tree / "link").unlink()
        (tree / "link").symlink_to("sub/b.txt")
    after, _ = _manifest(tree, db_path)
    assert after.digest != "sha256:" + "0" * 64
    assert after.digest == manifest_digest(after.entries())


def test_racily_clean_walk_files_no_manifest(tree: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries that changed within the margin of the walk: the digest is not filed under
    their stat (a write in the same clock tick could leave every field as it was)."""
    monkeypatch.setattr(context, "RACY_MARGIN_NS", 2_000_000_000)
    db_path = tmp_path / "memo.db"
    (tree / "a.txt").write_bytes(b"just now")
    _manifest(tree, db_path)
    assert sqlite3.connect(db_path).execute("SELECT count(*) FROM context_manifests").fetchone() == (0,)


def test_one_manifest_row_per_set_of_sources(tree: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "memo.db"
    for i in range(5):
        (tree / "a.txt").write_bytes(b"v%d" % i)
        os.utime(tree / "a.txt", ns=(0, i * 10**9))
        _manifest(tree, db_path)
    assert sqlite3.connect(db_path).execute("SELECT count(*) FROM context_manifests").fetchone() == (1,)


@pytest.mark.root
def test_builds_share_the_memo_through_the_store(busybox: Pybuild, tmp_path: Path) -> None:
    """`pybuild build` files context digests in the store and a later build reads them.

    The first build's rows are racily clean (the files were written just before), so the
    second build, 2.5 s later, re-reads and files them as trusted; a row then poisoned in
    the database shows up in the third build's key although the file did not change.
    The second build also filed the walk's manifest digest: while the file stats the
    same, that digest is the key's and the poisoned row matters only once it is gone.
    """
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY a.txt /a.txt\n")
    (ctx / "a.txt").write_text("aaaa")
    plain = ("build", "--progress", "plain", str(ctx))
    busybox(*plain)
    time.sleep(2.5)
    busybox(*plain)
    db = sqlite3.connect(busybox.root / "pybuild.db")
    ino = os.stat(ctx / "a.txt").st_ino
    assert db.execute("SELECT sha256 FROM context_digests WHERE ino = ?", (ino,)).fetchone() == (_sha(b"aaaa"),)
    assert "CACHED" in busybox(*plain).stderr
    with db:
        db.execute("UPDATE context_digests SET sha256 = ? WHERE ino = ?", (_sha(b"poison"), ino))
    assert "CACHED" in busybox(*plain).stderr  # the manifest's digest, filed by build 2
    assert db.execute("SELECT count(*) FROM context_manifests").fetchone() == (1,)
    with db:
        db.execute("DELETE FROM context_manifests")
    assert "files changed a.txt (content)" in busybox(*plain).stderr


def test_rows_of_deleted_files_are_dropped(tree: Path, tmp_path: Path) -> None:
    """The memo holds what the context holds: a deleted file's row, a renamed-away one's
    and an ignored one's go after the next whole walk; a row of another directory (not
    walked) stays; an old table without paths is brought up to date."""
    db_path = tmp_path / "memo.db"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "c.txt").write_bytes(b"cccc")
    (other / "Dockerfile").write_text("FROM scratch\n")
    _build(other, db_path)
    (tree / "gone.txt").write_bytes(b"gone")
    (tree / "sub" / "ignored.txt").write_bytes(b"ig")
    _build(tree, db_path)
    assert _rows(db_path) == 7  # 2 elsewhere + Dockerfile, a, b, gone, ignored
    (tree / "gone.txt").unlink()
    (tree / "sub" / "b.txt").rename(tmp_path / "b.txt")  # out of the context
    (tree / ".dockerignore").write_text("sub/ignored.txt\n")
    after, memo = _build(tree, db_path)
    assert sorted(after) == [".", ".dockerignore", "Dockerfile", "a.txt", "sub"]
    db = sqlite3.connect(db_path)
    paths = sorted(p for (p,) in db.execute("SELECT path FROM context_digests"))
    assert paths == sorted([str(other / "c.txt"), str(other / "Dockerfile"),
                            str(tree / ".dockerignore"), str(tree / "Dockerfile"),
                            str(tree / "a.txt")])
    # a database of the version before paths: its rows are forgotten once, then refilled
    db.execute("DROP TABLE context_digests")
    db.execute("CREATE TABLE context_digests (dev INTEGER NOT NULL, ino INTEGER NOT NULL, "
               "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, "
               "hashed_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (dev, ino)) "
               "WITHOUT ROWID")
    db.execute("INSERT INTO context_digests VALUES (1, 2, 3, 4, 5, 6, 'old')")
    db.commit()
    again, _ = _build(tree, db_path)
    assert again == after
    assert _rows(db_path) == 3


def test_fingerprint_takes_inode_numbers_past_int64() -> None:
    """Some filesystems hand out 64-bit inode numbers (overlay's xino, NFS): the packed
    fast form cannot hold them, the fingerprint still covers them and still changes."""
    real = os.lstat(".")

    def fake(ino: int, ctime_ns: int) -> os.stat_result:
        head = [real.st_mode, ino, *real[2:10]]
        times = [1.0, 2.0, 3.0, 10, 20, ctime_ns]
        return os.stat_result(head + times + [None] * (os.stat_result.n_fields - 16))

    big = [("", "/x/", [("a", fake(2**64 - 1, 30))])]
    moved = [("", "/x/", [("a", fake(2**64 - 1, 31))])]
    small = [("", "/x/", [("a", fake(7, 30))])]
    digest, latest = context._fingerprint(big)
    assert latest == 30 and digest == context._fingerprint(big)[0]
    assert len({digest, context._fingerprint(moved)[0], context._fingerprint(small)[0]}) == 3
