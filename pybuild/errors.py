"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero.

Anything that is not a PybuildError is a bug in pybuild and shows a traceback only with
--debug.
"""

from __future__ import annotations


class PybuildError(Exception):
    """A user-facing failure: bad input, a missing tool, a failing step."""

    exit_code = 1


class DockerfileError(PybuildError):
    """An error at a place in a Dockerfile: printed as `FILE:LINE: message`."""

    def __init__(self, message: str, line: int | None = None, filename: str = "Dockerfile") -> None:
        self.message = message
        self.line = line
        self.filename = filename
        super().__init__(str(self))

    def with_file(self, filename: str) -> DockerfileError:
        """Same error, naming the real file (the parser only sees text)."""
        return DockerfileError(self.message, self.line, filename)

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.filename}: {self.message}"
        return f"{self.filename}:{self.line}: {self.message}"


class StepError(DockerfileError):
    """A RUN step exited non-zero: the line of the step, the command and its exit code."""

    def __init__(self, message: str, line: int | None, exit_status: int,
                 filename: str = "Dockerfile") -> None:
        super().__init__(message, line, filename)
        self.exit_status = exit_status

    def with_file(self, filename: str) -> StepError:
        return StepError(self.message, self.line, self.exit_status, filename)


class NeedsRootError(PybuildError):
    """Building needs root (overlay mounts, runc)."""
