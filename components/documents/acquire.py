"""Download 3GPP specification zips from the public archive layout, resumably and at most once.

The archive is laid out as ``<base>/Specs/archive/38_series/38.331/38331-h00.zip``; the three
characters after the dash are the version (major.minor.patch, each 0-9 then a-z for 10-35), and
the major version is the release number. Files land in the same layout under ``dest`` (a cache
shared across runs); a file that is there is complete, because it is only renamed into place
after its length has been checked.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import httpx
from filelock import AsyncFileLock
from pydantic import ConfigDict, Field, field_validator
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from components.documents.threegpp import parse_version, version_code  # noqa: F401 (re-exported)
from components.settings import Settings

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(\d{2})\.(\d{3})(-\d+)?$")
_RELEASE = re.compile(r"^(?:rel(?:ease)?[-_ ]?|r)?(\d{1,2})$", re.IGNORECASE)


class AcquireError(RuntimeError):
    """A spec could not be acquired; the message says why and what to do.

    When raised by ``download`` because the archive is unreachable, ``results`` holds the
    per-spec outcomes so a caller can still record them.
    """

    def __init__(self, message: str, results: list["SpecResult"] | None = None):
        super().__init__(message)
        self.results = results or []


class _Incomplete(Exception):
    """The body ended before Content-Length; worth another try (the .part is kept)."""


# ---------------------------------------------------------------- versions and names


def parse_release(release: str | int) -> int:
    """``"Rel-17"``, ``"Release 17"``, ``"R17"`` or ``17`` -> ``17``."""
    m = _RELEASE.match(str(release).strip())
    if not m:
        raise ValueError(f"release {release!r} is not like 'Rel-17'")
    return int(m.group(1))


def _check_spec(spec: str) -> str:
    spec = str(spec).strip()
    if not _SPEC.match(spec):
        raise ValueError(f"spec {spec!r} is not a 3GPP spec number like '38.331' or '38.101-1'")
    return spec


def series_dir(spec: str) -> str:
    return f"{_check_spec(spec)[:2]}_series"


def spec_dir(spec: str) -> str:
    """Path of a spec's folder relative to the base URL (and to the cache)."""
    return f"Specs/archive/{series_dir(spec)}/{spec}"


def zip_name(spec: str, version: str) -> str:
    return f"{_check_spec(spec).replace('.', '')}-{version_code(*parse_version(version))}.zip"


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def versions_in_index(html: str, spec: str) -> list[str]:
    """The version codes of ``spec`` zips linked from a directory listing, oldest first."""
    pattern = re.compile(re.escape(_check_spec(spec).replace(".", "")) + r"-([0-9a-z]{3})\.zip", re.IGNORECASE)
    parser = _Hrefs()
    parser.feed(html)
    found = set()
    for href in parser.hrefs:
        m = pattern.fullmatch(unquote(urlsplit(href).path).rsplit("/", 1)[-1])
        if m:
            found.add(m.group(1).lower())
    return sorted(found, key=parse_version)


def newest_of_release(versions: Iterable[str], release: int) -> str | None:
    matching = [v for v in versions if parse_version(v)[0] == release]
    return max(matching, key=parse_version) if matching else None


# ---------------------------------------------------------------- requests and results


@dataclass(frozen=True)
class SpecRequest:
    spec: str
    release: int | None = None
    version: str | None = None  # normalised code, e.g. "h00"

    def __str__(self) -> str:
        return f"{self.spec}@{self.version}" if self.version else f"{self.spec}@Rel-{self.release}"


def parse_request(item: str | Mapping[str, Any]) -> SpecRequest:
    """``"38.331@Rel-17"``, ``"38.331@h00"`` or ``{spec: 38.331, release: Rel-17 | version: h00}``."""
    if isinstance(item, str):
        spec, sep, which = item.partition("@")
        if not sep or not which.strip():
            raise ValueError(f"{item!r}: expected 'SPEC@Rel-N' or 'SPEC@VERSION', e.g. '38.331@Rel-17'")
        which = which.strip()
        fields = {"spec": spec, "release": which} if _RELEASE.match(which) else {"spec": spec, "version": which}
    else:
        fields = dict(item)
    spec = _check_spec(str(fields.get("spec", "")))
    release, version = fields.get("release"), fields.get("version")
    if (release is None) == (version is None):
        raise ValueError(f"{item!r}: give exactly one of release or version")
    if version is not None:
        return SpecRequest(spec, version=version_code(*parse_version(str(version))))
    return SpecRequest(spec, release=parse_release(release))


@dataclass
class SpecResult:
    request: str
    spec: str
    status: str  # "downloaded" | "cached" | "failed"
    version: str | None = None
    url: str | None = None
    path: str | None = None
    bytes: int = 0  # bytes transferred this time
    error: str | None = None
    offline: bool = False  # failed because the archive could not be reached at all


# ---------------------------------------------------------------- the downloader


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (httpx.TransportError, _Incomplete)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return False


def _is_offline(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


class ThreeGPPDownloader:
    def __init__(
        self,
        base_url: str = "https://www.3gpp.org/ftp",
        dest: str | os.PathLike = "outputs/cache/3gpp",
        concurrency: int = 4,
        retries: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        trust_env: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.dest = Path(dest).resolve()
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.trust_env = trust_env
        self.progress: Any = None  # a components.progress.Progress counting bytes, when watched

    def local_path(self, spec: str, version: str) -> Path:
        return self.dest / spec_dir(spec) / zip_name(spec, version)

    def url(self, spec: str, version: str) -> str:
        return f"{self.base_url}/{spec_dir(spec)}/{zip_name(spec, version)}"

    def download(self, items: Iterable[str | Mapping[str, Any] | SpecRequest]) -> list[SpecResult]:
        """Fetch every requested spec; one result per distinct request, failures included.

        Raises ``AcquireError`` (with ``results`` attached) only when nothing succeeded and the
        archive could not be reached: that is the "you are offline" case, not a per-spec failure.
        """
        return asyncio.run(self.adownload(items))

    async def adownload(self, items: Iterable[str | Mapping[str, Any] | SpecRequest]) -> list[SpecResult]:
        results: list[SpecResult] = []
        requests: list[SpecRequest] = []
        for item in items:
            try:
                req = item if isinstance(item, SpecRequest) else parse_request(item)
            except ValueError as exc:
                results.append(SpecResult(request=str(item), spec=str(item), status="failed", error=str(exc)))
                continue
            if req not in requests:
                requests.append(req)
        if not requests:
            return results
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(
            timeout=self.timeout_s, limits=limits, follow_redirects=True, trust_env=self.trust_env
        ) as client:
            results += await asyncio.gather(*(self._one(client, sem, r) for r in requests))
        offline = [r for r in results if r.offline]
        if offline and all(r.status == "failed" for r in results):
            raise AcquireError(offline[0].error or f"cannot reach {self.base_url}", results)
        return results

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: SpecRequest) -> SpecResult:
        res = SpecResult(request=str(req), spec=req.spec, status="failed")
        async with sem:
            try:
                res.version = req.version or await self._resolve_release(client, req)
                res.url = self.url(req.spec, res.version)
                path = self.local_path(req.spec, res.version)
                res.path = str(path)
                if path.is_file():
                    res.status = "cached"
                    return res
                path.parent.mkdir(parents=True, exist_ok=True)
                # Two runs fetching the same file would append to one .part: the second waits,
                # then finds the file complete.
                async with AsyncFileLock(str(path) + ".lock", timeout=self.timeout_s * (self.retries + 2)):
                    if path.is_file():
                        res.status = "cached"
                        return res
                    await self._retrying(lambda: self._fetch(client, res.url, path, res))
                res.status = "downloaded"
            except AcquireError as exc:
                res.error = str(exc)
            except Exception as exc:  # one spec's failure never stops the others
                res.error = self._explain(exc, req)
                res.offline = _is_offline(exc)
        if res.error:
            log.warning("acquire %s failed: %s", req, res.error)
        return res

    async def _retrying(self, fn):
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        ):
            with attempt:
                return await fn()

    def _explain(self, exc: Exception, req: SpecRequest) -> str:
        if _is_offline(exc):
            return (
                f"cannot reach {self.base_url} ({type(exc).__name__}: {exc}) after {self.retries + 1} tries "
                f"(offline?) — set corpus.path to local documents"
            )
        if isinstance(exc, httpx.HTTPStatusError):
            code = exc.response.status_code
            what = "not found" if code == 404 else f"HTTP {code}"
            return f"{req}: {exc.request.url} {what}"
        if isinstance(exc, (_Incomplete, httpx.RemoteProtocolError)):
            return f"{req}: download kept ending early after {self.retries + 1} tries ({exc}); the .part is kept to resume"
        if isinstance(exc, httpx.TransportError):
            return f"{req}: network error after {self.retries + 1} tries ({type(exc).__name__}: {exc})"
        return f"{req}: {type(exc).__name__}: {exc}"

    async def _resolve_release(self, client: httpx.AsyncClient, req: SpecRequest) -> str:
        index_url = f"{self.base_url}/{spec_dir(req.spec)}/"
        try:
            html = await self._retrying(lambda: self._get_text(client, index_url))
        except Exception as exc:
            cached = self._cached_versions(req.spec)
            chosen = newest_of_release(cached, req.release)
            if chosen and _is_offline(exc):
                log.warning("%s: %s unreachable; using cached %s", req, self.base_url, chosen)
                return chosen
            raise
        chosen = newest_of_release(versions_in_index(html, req.spec), req.release)
        if chosen is None:
            raise AcquireError(f"{req}: no Rel-{req.release} version listed at {index_url}")
        return chosen

    def _cached_versions(self, spec: str) -> list[str]:
        folder = self.dest / spec_dir(spec)
        prefix = spec.replace(".", "") + "-"
        return [p.name[len(prefix):-4] for p in folder.glob(f"{prefix}???.zip")] if folder.is_dir() else []

    @staticmethod
    async def _get_text(client: httpx.AsyncClient, url: str) -> str:
        r = await client.get(url)
        r.raise_for_status()
        return r.text

    async def _fetch(self, client: httpx.AsyncClient, url: str, path: Path, res: SpecResult) -> None:
        """Download ``url`` to ``path`` via ``path.part``, resuming it when the server allows."""
        part = path.with_name(path.name + ".part")
        path.parent.mkdir(parents=True, exist_ok=True)
        offset = part.stat().st_size if part.exists() else 0
        # identity: the bytes on the wire are the file, so Content-Length and Range mean file bytes.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        async with client.stream("GET", url, headers=headers) as r:
            if r.status_code == 416:  # the part is as long as (or longer than) the file: start over
                part.unlink(missing_ok=True)
                raise _Incomplete("server refused the resume range; restarting")
            r.raise_for_status()
            if r.status_code == 206:
                total = _range_total(r, offset)
                if total is None:  # a range we did not ask for: drop the part and start over
                    part.unlink(missing_ok=True)
                    raise _Incomplete(f"unexpected Content-Range {r.headers.get('content-range')!r}")
            else:
                offset = 0  # server ignored Range: restart cleanly rather than append a second copy
                length = r.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
            with open(part, "ab" if offset else "wb") as fh:
                async for chunk in r.aiter_raw():  # unchunked: a cut-off body keeps every byte it got
                    fh.write(chunk)
                    res.bytes += len(chunk)
                    if self.progress is not None:
                        self.progress.advance(len(chunk), note=path.name)
                fh.flush()
                os.fsync(fh.fileno())
        size = part.stat().st_size
        if total is not None and size != total:
            if size > total:
                part.unlink()
            raise _Incomplete(f"have {size} of {total} bytes")
        if not zipfile.is_zipfile(part):
            part.unlink()
            raise AcquireError(f"{res.request}: {url} did not return a zip archive")
        os.replace(part, path)


def _range_total(r: httpx.Response, offset: int) -> int | None:
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", r.headers.get("content-range", "").strip())
    if not m or int(m.group(1)) != offset:
        return None
    if m.group(3) != "*":
        return int(m.group(3))
    return offset + int(m.group(2)) - int(m.group(1)) + 1


class ArchiveLimits(Settings):
    """Limits on unpacking one downloaded archive (zip bombs)."""

    enabled: bool = True
    max_total_bytes: int = Field(2 * 2**30, ge=1)
    max_files: int = Field(10000, ge=1)
    max_ratio: float = Field(200, gt=1)


class AcquireConfig(Settings):
    """``acquire`` group: which specs to fetch, the downloader, and the unpacking limits."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    specs: list[str | dict[str, Any]] = []
    downloader: ThreeGPPDownloader
    extract: ArchiveLimits = ArchiveLimits()

    @field_validator("specs", mode="before")
    @classmethod
    def _spec_numbers(cls, specs: Any) -> Any:
        # YAML reads an unquoted 38.330 as the float 38.33; spec numbers always have three decimals.
        return [{**s, "spec": f"{s['spec']:.3f}"} if isinstance(s, dict) and isinstance(s.get("spec"), float)
                else s for s in (specs or [])]
