"""Why an LLM request failed, and whether trying again can help.

``transient`` failures (connection refused, timeout, HTTP 5xx, 429, an open circuit) are retried
and may be served by a fallback; ``final`` ones (other 4xx, an invalid answer, an endpoint the
privacy policy refuses) are not: the same request would fail the same way. ``failure`` reads
``"transient"`` or ``"final"`` for the extract stage's records.
"""
from __future__ import annotations


class ServiceFailure(RuntimeError):
    transient: bool = True

    def __init__(self, message: str, *, status: int | None = None, transient: bool | None = None,
                 retry_after: float | None = None, request_bytes: int = 0,
                 response_bytes: int = 0) -> None:
        super().__init__(message)
        self.status = status
        if transient is not None:
            self.transient = transient
        self.retry_after = retry_after
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes

    @property
    def failure(self) -> str:
        return "transient" if self.transient else "final"


class ServiceUnavailable(ServiceFailure):
    """The server cannot be reached, did not answer in time, or cannot serve this model: a reason
    to try the next model or service in the chain."""


class ModelMissing(ServiceUnavailable):
    """The server is up but does not have the model; the message says how to get it."""

    transient = False


class CircuitOpen(ServiceUnavailable):
    """Every target's breaker is open: recent requests failed, so none is sent now."""


class Aborted(ServiceUnavailable):
    """The run is stopping: no request leaves the chain any more, not even a retry (transient:
    the next run asks again)."""


class ServiceError(ServiceFailure):
    """The server answered with an error. 429 and 5xx are transient; other statuses are final."""

    def __init__(self, message: str, *, status: int | None = None, **kw) -> None:
        if kw.get("transient") is None and status is not None:
            kw["transient"] = status == 429 or status >= 500
        super().__init__(message, status=status, **kw)


class InvalidResponse(ServiceError):
    """The server's answer is not the documented shape (malformed JSON, no choices)."""

    def __init__(self, message: str, **kw) -> None:
        kw.setdefault("transient", False)
        super().__init__(message, **kw)


class EndpointRefused(ServiceError):
    """The privacy policy forbids this endpoint: fix the config."""

    def __init__(self, message: str, **kw) -> None:
        kw.setdefault("transient", False)
        super().__init__(message, **kw)
