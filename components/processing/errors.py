"""The one error type of the processing engines, carrying the binary's JSON error object."""
from __future__ import annotations


class ProcessingError(RuntimeError):
    """Processing failed. ``kind`` is one of: config, usage, input, output, build, timeout,
    crash, internal; ``path`` names the file concerned (may be empty)."""

    def __init__(self, kind: str, message: str, path: str = "") -> None:
        super().__init__(f"{kind}: {message}" + (f" ({path})" if path else ""))
        self.kind = kind
        self.message = message
        self.path = path
