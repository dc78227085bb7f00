"""Root-free: what the typed ops put in a key. A git source keys on its resolved commit (a
branch that moved is another key, the same commit under another ref name is not read
twice), `ADD --unpack` and the sandbox hostname each change the key they belong to."""

from __future__ import annotations

from typing import Any

from pybuild.solver import ops


def _copy(**kw: Any) -> ops.FileCopy:
    base: dict[str, Any] = dict(add=True, dest="/src", workdir="/", chown="", chmod="",
                                exclude=(), parents=False, link=False, sources=())
    base.update(kw)
    return ops.FileCopy(**base)


def _run(**kw: Any) -> ops.Exec:
    base: dict[str, Any] = dict(argv=("sh", "-c", "true"), env=(), args=(), cwd="/", user="",
                                network="host", mounts=(), bind_sources=())
    base.update(kw)
    return ops.Exec(**base)


def test_git_source_keys_on_its_commit() -> None:
    a = _copy(git=(("git://127.0.0.1/r.git", "a" * 40, "", False),))
    moved = _copy(git=(("git://127.0.0.1/r.git", "b" * 40, "", False),))
    kept = _copy(git=(("git://127.0.0.1/r.git", "a" * 40, "", True),))
    sub = _copy(git=(("git://127.0.0.1/r.git", "a" * 40, "docs", False),))
    keys = {ops.op_key("p", op) for op in (a, moved, kept, sub)}
    assert len(keys) == 4
    assert ops.op_key("p", a) == ops.op_key("p", _copy(git=(("git://127.0.0.1/r.git", "a" * 40, "", False),)))
    assert ops.recorded_inputs(a)["git"] == [["git://127.0.0.1/r.git", "a" * 40, "", False]]


def test_unpack_and_hostname_are_in_their_keys() -> None:
    assert len({ops.op_key("p", _copy(unpack=u)) for u in (None, True, False)}) == 3
    assert "unpack" not in ops.recorded_inputs(_copy())
    assert ops.op_key("p", _run()) == ops.op_key("p", _run(hostname="buildkitsandbox"))
    assert ops.op_key("p", _run()) != ops.op_key("p", _run(hostname="box"))
