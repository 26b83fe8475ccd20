"""Which model answers a chunk: the primary, a larger one for complex chunks, a smaller one when
the primary fails. The process stage scores each chunk's complexity in [0, 1]."""
from __future__ import annotations

from pydantic import Field

from components.settings import Settings


class Routing(Settings):
    """``service.routing``: models on the same server as ``service.model``."""

    complex_model: str | None = None   # serves chunks with complexity above complex_above
    complex_above: float = Field(0.6, ge=0, le=1)
    fallback_model: str | None = None  # serves when the routed model fails or its breaker is open

    def models(self, primary: str) -> list[str]:
        out = [primary]
        for m in (self.complex_model, self.fallback_model):
            if m and m not in out:
                out.append(m)
        return out

    def order(self, primary: str, complexity: float | None) -> list[str]:
        """Models to try, first choice first."""
        first = (self.complex_model if self.complex_model and complexity is not None
                 and complexity > self.complex_above else primary)
        out = [first]
        for m in (primary, self.fallback_model):
            if m and m not in out:
                out.append(m)
        return out
