"""What a chat call returns, and what a structured answer needs: the vocabulary shared by the
wire adapters (``services``) and the chain around them (``resilience``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Reply:
    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None
    model: str | None = None
    service: str | None = None
    thinking_stripped: int = 0      # characters of reasoning removed (never stored)
    cached: bool = False
    retries: int = 0
    fallback: bool = False          # served by other than the routed first choice
    length_retried: bool = False    # cut at max_tokens once, asked again with more room
    request_bytes: int = 0
    response_bytes: int = 0
    server_seconds: float | None = None  # generation time the server reports, when it does

    def cacheable(self) -> dict:
        d = asdict(self)
        for k in ("cached", "retries", "fallback", "request_bytes", "response_bytes", "server_seconds"):
            d.pop(k)
        return d


def schema_token_budget(schema: dict) -> int:
    """Tokens the largest answer the schema allows needs (about 3 characters a token for JSON;
    an unbounded string or array counts as 32 characters or 4 items)."""
    def chars(node: dict) -> int:
        t = node.get("type")
        if t == "object" or "properties" in node:
            return 2 + sum(len(k) + 4 + chars(v) for k, v in node.get("properties", {}).items())
        if t == "array":
            return 2 + int(node.get("maxItems", 4)) * (chars(node.get("items", {})) + 2)
        if t == "string":
            return 2 + int(node.get("maxLength", 32))
        return 8
    return chars(schema) // 3 + 8
