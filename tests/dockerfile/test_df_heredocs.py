"""Heredocs: bodies, `<<-`, quoted delimiters, several per instruction, ONBUILD."""

from __future__ import annotations

from pybuild.dockerfile import ShellLex, instructions as ins, parse, stages


def only(text: str) -> ins.Instruction:
    return stages.plan(parse("FROM scratch\n" + text), {}, None).target.instructions[0]


def test_run_heredoc_body_is_kept_raw_for_the_shell() -> None:
    run = only("RUN <<EOF\necho $HOME \"q\"\n\tindented\nEOF\nUSER x\n")
    assert isinstance(run, ins.Run)
    assert run.command == "<<EOF" and not run.exec_form
    assert [(h.name, h.content, h.expand) for h in run.heredocs] == [
        ("EOF", 'echo $HOME "q"\n\tindented\n', True)]
    assert (run.line, run.end_line) == (2, 5)
    assert run.expand(ShellLex(), {"HOME": "/x"}).heredocs == run.heredocs  # the shell expands


def test_run_with_several_heredocs_and_redirections() -> None:
    df = parse("FROM scratch\nRUN cat <<A > /a && cat <<-'B' >> /b\none\nA\n\t\ttwo\n\tB\nRUN true\n")
    run = df.nodes[1]
    assert [(h.name, h.content, h.expand, h.chomp) for h in run.heredocs] == [
        ("A", "one\n", True, False), ("B", "\t\ttwo\n", False, True)]
    assert run.heredocs[1].data == "two\n"
    assert (run.start_line, run.end_line) == (2, 6)
    assert df.nodes[2].start_line == 7


def test_copy_heredoc_expands_unless_quoted() -> None:
    copy = only('COPY <<one <<"two" <<-th\'r\'ee /dst/\n$A "$B"\none\n$A\ntwo\n\t$A\n\tthree\n')
    assert isinstance(copy, ins.Copy)
    assert copy.sources == [] and copy.dest == "/dst/"
    out = copy.expand(ShellLex(), {"A": "1", "B": "2"})
    assert [(h.name, h.content) for h in out.heredocs] == [
        ("one", '1 "2"\n'), ("two", "$A\n"), ("three", "$A\n")]


def test_copy_mixes_heredocs_and_paths() -> None:
    copy = only("COPY --chmod=755 <<EOF ./local.sh /usr/bin/\n#!/bin/sh\nEOF\n")
    assert isinstance(copy, ins.Copy)
    assert copy.sources == ["./local.sh"] and copy.chmod == "755"
    assert [(h.name, h.content) for h in copy.heredocs] == [("EOF", "#!/bin/sh\n")]


def test_heredoc_in_exec_form_is_not_a_heredoc() -> None:
    df = parse('FROM scratch\nRUN ["cat", "<<EOF"]\nEOF\n')
    assert df.nodes[1].heredocs == [] and df.nodes[2].name == "eof"


def test_onbuild_heredoc_becomes_part_of_the_trigger() -> None:
    ob = only("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert isinstance(ob, ins.Onbuild)
    assert ob.expression == "RUN <<EOF\necho hi\nEOF"
    trigger = ins.from_node(parse(ob.expression).nodes[0])
    assert isinstance(trigger, ins.Run) and trigger.heredocs[0].content == "echo hi\n"


def test_heredoc_terminated_at_end_of_file_without_newline() -> None:
    run = only("RUN <<EOF\nx\nEOF")
    assert isinstance(run, ins.Run) and run.heredocs[0].content == "x\n"


def test_crlf_lines() -> None:
    df = parse("FROM scratch\r\nRUN a \\\r\n  b\r\nCOPY <<EOF /x\r\nhi\r\nEOF\r\n")
    assert df.nodes[1].args == ["a   b"]
    assert df.nodes[2].heredocs[0].content == "hi\r\n"
