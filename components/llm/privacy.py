"""Local first: which endpoints a request may go to, and what is removed from it first.

``privacy.local_only=true`` (the default) refuses any endpoint that is not on this machine. A user
who allows remote endpoints still gets no plain ``http://`` to another host, TLS verified (a custom
CA bundle may be given, verification is never turned off), and every request body scrubbed of
personal and network identifiers first.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from components.llm.errors import EndpointRefused
from components.settings import Settings

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(url: str) -> bool:
    host = (urlsplit(url if "://" in url else f"http://{url}").hostname or "").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified  # 0.0.0.0 as a client target is this machine


def _valid_ipv6(m: re.Match) -> bool:
    try:
        return ipaddress.ip_address(m.group(0)).version == 6
    except ValueError:
        return False


_CLAUSE = re.compile(r"(?:clause|subclause|section|sect\.|§|annex|table|figure|step)s?\s*$", re.I)


def _not_a_clause(m: re.Match) -> bool:
    # Spec clauses are dotted numbers too ("clause 5.3.3.1"); the word before tells them apart.
    return not _CLAUSE.search(m.string[max(0, m.start() - 12):m.start()])


# (kind, pattern, replacement, extra check). Digit runs of 14-16 are IMSI (15), IMEI (15) and
# IMEISV (16) lengths; shorter ones are left alone so clause numbers and spec versions survive.
_BUILTIN = [
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]", None),
    ("ipv6", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"), "[IP]", _valid_ipv6),
    ("ipv4", re.compile(r"(?<!\d)(?<!\d\.)(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\d|\.\d)"), "[IP]", _not_a_clause),
    ("subscriber_id", re.compile(r"(?<!\d)\d{14,16}(?!\d)"), "[ID]", None),
    ("phone", re.compile(r"(?<![\w+])\+\d[\d ().-]{6,18}\d(?!\d)|(?<!\d)\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?!\d)"), "[PHONE]", None),
]


class Privacy(Settings):
    """``privacy``: where requests may go and what is scrubbed from them."""

    local_only: bool = True
    ca_bundle: str | None = None       # PEM bundle for a remote endpoint behind a private CA
    scrub: bool = True                 # scrub request bodies sent to a remote endpoint
    scrub_local: bool = False          # scrub for loopback servers too
    patterns: list[str] = Field(default_factory=list)  # extra regexes, replaced by [REDACTED]

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {exc}") from None
        return v

    def check_endpoint(self, url: str, service: str) -> None:
        if is_loopback(url):
            return
        if self.local_only:
            raise EndpointRefused(
                f"service '{service}': {_origin(url)} is not on this machine, and privacy.local_only=true "
                f"refuses remote endpoints (your documents would leave it). Use a local server, or "
                f"allow remote endpoints with privacy.local_only=false")
        if urlsplit(url).scheme != "https":
            raise EndpointRefused(f"service '{service}': {_origin(url)} is a remote host over plain "
                                  f"http; only https is allowed to leave this machine")

    def verify(self) -> str | bool:
        """httpx's ``verify``: the CA bundle when configured, else the system store. Never False."""
        return self.ca_bundle or True

    def should_scrub(self, url: str) -> bool:
        return self.scrub and (self.scrub_local or not is_loopback(url))

    def scrubber(self) -> "Scrubber":
        return Scrubber(self.patterns)


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}"


class Scrubber:
    def __init__(self, patterns: list[str] = ()) -> None:
        self.rules = list(_BUILTIN) + [("custom", re.compile(p), "[REDACTED]", None) for p in patterns]

    def text(self, text: str, counts: Counter) -> str:
        for kind, rx, repl, ok in self.rules:
            def sub(m: re.Match, kind=kind, repl=repl, ok=ok) -> str:
                if ok is not None and not ok(m):
                    return m.group(0)
                counts[kind] += 1
                return repl
            text = rx.sub(sub, text)
        return text

    def messages(self, messages: list[dict]) -> tuple[list[dict], Counter]:
        counts: Counter = Counter()
        out = [{**m, "content": self.text(m["content"], counts)} if isinstance(m.get("content"), str) else m
               for m in messages]
        return out, counts
