"""The Dockerfile frontend: text → nodes (`parse`), typed instructions, stages and args.

    df = parse(text)                       # Dockerfile(directives, escape, nodes)
    plan = stages.plan(df, build_args, target)
    instr.expand(ShellLex(df.escape), env)  # what Docker substitutes, nothing more
"""

from pybuild.dockerfile import instructions, stages
from pybuild.dockerfile.parser import Dockerfile, Heredoc, Node, dump, parse
from pybuild.dockerfile.shell import ShellLex

__all__ = ["Dockerfile", "Heredoc", "Node", "ShellLex", "dump", "instructions", "parse", "stages"]
