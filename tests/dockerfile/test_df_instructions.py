"""Typed instructions: shapes docker stores, and expansion only where Docker expands."""

from __future__ import annotations

import pytest

from pybuild.dockerfile import ShellLex, instructions as ins, parse, stages


def instrs(text: str) -> list[ins.Instruction]:
    return stages.plan(parse("FROM scratch\n" + text), {}, None).target.instructions


def test_env_pairs_expand_with_the_previous_environment() -> None:
    env = instrs('ENV abc=bye def=$abc ghi="a b"\n')[0]
    assert isinstance(env, ins.Env)
    assert env.expand(ShellLex(), {"abc": "hello"}).pairs == [
        ("abc", "bye"), ("def", "hello"), ("ghi", "a b")]
    legacy = instrs('ENV NAME "1 DUBA 3"\n')[0]
    assert legacy.expand(ShellLex(), {}).pairs == [("NAME", "1 DUBA 3")]  # type: ignore[attr-defined]


def test_label_is_not_env() -> None:
    label = instrs('LABEL "com.example.v"="$V" other=x\n')[0]
    assert isinstance(label, ins.Label) and not isinstance(label, ins.Env)
    assert label.expand(ShellLex(), {"V": "2"}).pairs == [("com.example.v", "2"), ("other", "x")]


def test_run_cmd_entrypoint_are_not_expanded() -> None:
    run, cmd, ep = instrs('RUN echo $HOME\nCMD ["a", "$B"]\nENTRYPOINT exec x $C\n')
    env = {"HOME": "/h", "B": "b", "C": "c"}
    assert run.expand(ShellLex(), env) == run
    assert cmd.expand(ShellLex(), env) == ins.Cmd(line=3, end_line=3, original='CMD ["a", "$B"]',
                                                  command=["a", "$B"], exec_form=True)
    assert isinstance(ep, ins.Entrypoint) and ep.command == "exec x $C" and not ep.exec_form


def test_copy_flags_and_expansion() -> None:
    copy = instrs("COPY --chown=$U:$G --chmod=0644 --link --parents --exclude=*.md "
                  "--exclude=$X a${S} b /dst/$D\n")[0]
    assert isinstance(copy, ins.Copy)
    assert copy.link and copy.parents and copy.exclude == ["*.md", "$X"]
    out = copy.expand(ShellLex(), {"U": "1", "G": "2", "X": "*.txt", "S": "1", "D": "d"})
    assert (out.chown, out.chmod, out.sources, out.dest, out.exclude) == (
        "1:2", "0644", ["a1", "b"], "/dst/d", ["*.md", "*.txt"])


def test_add_flags() -> None:
    add = instrs("ADD --checksum=sha256:$SUM --keep-git-dir=true https://x/y.tgz /y\n")[0]
    assert isinstance(add, ins.Add) and add.keep_git_dir and add.from_ is None
    assert add.expand(ShellLex(), {"SUM": "abc"}).checksum == "sha256:abc"


def test_copy_json_form_keeps_spaces() -> None:
    copy = instrs('COPY ["a file", "/dst dir/"]\n')[0]
    assert isinstance(copy, ins.Copy) and copy.sources == ["a file"] and copy.dest == "/dst dir/"


def test_expose_splits_words_volume_does_not() -> None:
    expose, volume = instrs("EXPOSE 80 $PORTS\nVOLUME $V\n")
    assert expose.expand(ShellLex(), {"PORTS": "443/tcp  53/udp"}).ports == [  # type: ignore[attr-defined]
        "80", "443/tcp", "53/udp"]
    assert volume.expand(ShellLex(), {"V": "/a /b"}).paths == ["/a /b"]  # type: ignore[attr-defined]


def test_healthcheck_shapes() -> None:
    shell, exec_, none = instrs(
        "HEALTHCHECK --interval=1m30s --timeout=1.5s --start-period=2h --start-interval=250ms "
        "--retries=3 CMD curl -f http://x/ || exit 1\n"
        'HEALTHCHECK CMD ["/bin/check", "-q"]\nHEALTHCHECK NONE\n')
    assert shell == ins.Healthcheck(
        line=2, end_line=2, original=shell.original, test=["CMD-SHELL", "curl -f http://x/ || exit 1"],
        interval=90_000_000_000, timeout=1_500_000_000, start_period=7_200_000_000_000,
        start_interval=250_000_000, retries=3)
    assert exec_.test == ["CMD", "/bin/check", "-q"]  # type: ignore[attr-defined]
    assert none.test == ["NONE"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("text,nanos", [("0", 0), ("1h2m3s", 3_723_000_000_000), ("-1.5ms", -1_500_000),
                                        ("3us", 3000), ("3µs", 3000), (".5s", 500_000_000)])
def test_go_durations(text: str, nanos: int) -> None:
    assert ins.parse_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "s", "1", "1x", ".s", "1.2.3s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        ins.parse_duration(text)


def test_mounts() -> None:
    run = instrs("RUN --mount=type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1 "
                 "--mount=type=secret,id=tok,env=TOKEN,required "
                 "--mount=type=tmpfs,dst=/t,size=64m --mount=from=build,src=/out,target=/o,rw "
                 "--network=none --security=insecure make\n")[0]
    assert isinstance(run, ins.Run)
    cache, secret, tmpfs, bind = run.mounts
    assert (cache.type, cache.target, cache.sharing, cache.mode, cache.uid, cache.readonly) == (
        "cache", "/root/.cache", "locked", 0o700, 1, False)
    assert (secret.type, secret.id, secret.env, secret.required, secret.readonly) == (
        "secret", "tok", "TOKEN", True, True)
    assert (tmpfs.target, tmpfs.size) == ("/t", 64 * 1024 * 1024)
    assert (bind.type, bind.from_, bind.source, bind.rw) == ("bind", "build", "/out", True)
    assert (run.network, run.security) == ("none", "insecure")


def test_mount_values_expand_with_the_step_environment() -> None:
    run = instrs("RUN --mount=type=cache,target=$HOME/.cache,id=$ID true\n")[0]
    m = run.expand(ShellLex(), {"HOME": "/root", "ID": "pip"}).mounts[0]  # type: ignore[attr-defined]
    assert (m.target, m.id) == ("/root/.cache", "pip")


def test_from_and_stage_names() -> None:
    node = parse("FROM --platform=linux/arm64 Alpine:3 as Builder\n").nodes[0]
    frm = ins.from_node(node)
    assert frm == ins.From(line=1, end_line=1, original=node.original, image="Alpine:3",
                           name="builder", platform="linux/arm64")


def test_onbuild_expression_keeps_the_trigger_text() -> None:
    ob = instrs("  onbuild   COPY --chown=1 . /app\n")[0]
    assert isinstance(ob, ins.Onbuild) and ob.expression == "COPY --chown=1 . /app"


def test_arg_maintainer_shell_stopsignal_user_workdir() -> None:
    arg, mnt, shell, sig, user, wd = instrs(
        'ARG A B="x y"\nMAINTAINER Jo <jo@x>\nSHELL ["/bin/bash", "-c"]\nSTOPSIGNAL $S\n'
        "USER $U:grp\nWORKDIR ${W:-/srv}\n")
    env = {"S": "SIGTERM", "U": "app"}
    assert arg.args == [("A", None), ("B", '"x y"')]  # type: ignore[attr-defined]
    assert arg.expand(ShellLex(), {}).args == [("A", None), ("B", "x y")]  # type: ignore[attr-defined]
    assert mnt.name == "Jo <jo@x>"  # type: ignore[attr-defined]
    assert shell.command == ["/bin/bash", "-c"]  # type: ignore[attr-defined]
    assert sig.expand(ShellLex(), env).signal == "SIGTERM"  # type: ignore[attr-defined]
    assert user.expand(ShellLex(), env).user == "app:grp"  # type: ignore[attr-defined]
    assert wd.expand(ShellLex(), env).path == "/srv"  # type: ignore[attr-defined]


def test_escape_directive_backtick() -> None:
    df = parse("# escape=`\nFROM scratch\nCOPY a `\n  C:\\dst\\\nENV P=C:\\x`$NOT\n")
    assert df.escape == "`" and df.directives == {"escape": "`"}
    copy, env = stages.plan(df, {}, None).target.instructions
    lex = ShellLex(df.escape)
    assert copy.expand(lex, {}).dest == "C:\\dst\\"  # type: ignore[attr-defined]
    assert env.expand(lex, {"NOT": "x"}).pairs == [("P", "C:\\x$NOT")]  # type: ignore[attr-defined]
