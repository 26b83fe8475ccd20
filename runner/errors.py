"""What a stage raises; the app tells them apart (exit codes, run status)."""
from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot run; the message says why and what to do."""

    stage: str | None = None  # set by the pipeline: the stage that failed


class Interrupted(BaseException):
    """The run was asked to stop (Ctrl-C, SIGTERM). A stage that sees ``ctx.cancel`` set stops
    taking new work, keeps what is finished and raises this; like KeyboardInterrupt it is not
    an ``Exception``, so handlers of ordinary errors do not swallow it."""

    stage: str | None = None
