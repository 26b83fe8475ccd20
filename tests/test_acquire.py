"""The 3GPP downloader and the acquire stage against a real HTTP server on loopback.

The server serves a tmp folder laid out like the public archive; handler switches add Range
support, a dropped connection, transient 500s and slow responses. Only 127.0.0.1 is ever used.
"""
from __future__ import annotations

import io
import json
import random
import re
import socket
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from docx import Document
from omegaconf import OmegaConf

from conftest import REPO
from components.documents.acquire import (
    AcquireError,
    ThreeGPPDownloader,
    newest_of_release,
    parse_release,
    parse_request,
    parse_version,
    series_dir,
    version_code,
    versions_in_index,
    zip_name,
)
from components.tracking import NullTracker
from runner import pipeline
from runner.stage import StageContext, StageError
from runner.stages import acquire as acquire_stage

VERSIONS_38331 = ["g60", "h00", "h10", "h21", "i00"]


# ---------------------------------------------------------------- fixture archive


def _docx_bytes(spec: str, version: str) -> bytes:
    # Our own 3GPP-style text; no specification text is committed.
    doc = Document()
    doc.add_heading(f"3GPP TS {spec} V{'.'.join(map(str, parse_version(version)))} (fixture)", 1)
    doc.add_paragraph("5.3.3 RRC connection establishment")
    doc.add_paragraph("The UE shall start timer T300 upon submission of the RRCSetupRequest message.")
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


def _spec_zip(path: Path, spec: str, version: str, padding: int = 200_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Incompressible padding, stored, so files are big enough to be cut mid-way.
    noise = random.Random(f"{spec}{version}").randbytes(padding)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{zip_name(spec, version)[:-4]}.docx", _docx_bytes(spec, version), zipfile.ZIP_DEFLATED)
        zf.writestr("padding.bin", noise, zipfile.ZIP_STORED)


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    for v in VERSIONS_38331:
        _spec_zip(root / "Specs/archive/38_series/38.331" / zip_name("38.331", v), "38.331", v)
    _spec_zip(root / "Specs/archive/38_series/38.413" / zip_name("38.413", "g50"), "38.413", "g50")
    _spec_zip(root / "Specs/archive/36_series/36.300" / zip_name("36.300", "f00"), "36.300", "f00")
    return root


def served(root: Path, spec: str, version: str) -> bytes:
    return (root / "Specs/archive" / series_dir(spec) / spec / zip_name(spec, version)).read_bytes()


class ArchiveHandler(SimpleHTTPRequestHandler):
    range_ok = False
    drop: dict[str, int] = {}  # path -> how many times to cut the body halfway
    fail: dict[str, int] = {}  # path -> how many 500s to answer first
    delay = 0.0
    log: list[tuple[str, str | None]] = []
    lock = threading.Lock()
    inflight = 0
    max_inflight = 0

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        cls = type(self)
        with cls.lock:
            cls.log.append((self.path, self.headers.get("Range")))
            cls.inflight += 1
            cls.max_inflight = max(cls.max_inflight, cls.inflight)
        try:
            time.sleep(cls.delay)
            self._serve(cls)
        finally:
            with cls.lock:
                cls.inflight -= 1

    def _serve(self, cls):
        if cls.fail.get(self.path, 0) > 0:
            cls.fail[self.path] -= 1
            self.send_error(500, "transient")
            return
        fpath = Path(self.translate_path(self.path))
        if not fpath.is_file():
            return super().do_GET()
        data = fpath.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if cls.range_ok and rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.drop.get(self.path, 0) > 0:
            cls.drop[self.path] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)
            return
        self.wfile.write(body)


@pytest.fixture
def serve(archive_root):
    servers = []

    def start(root: Path = archive_root, **behaviour):
        handler = type(
            "Handler",
            (ArchiveHandler,),
            {"log": [], "drop": {}, "fail": {}, "lock": threading.Lock(), "inflight": 0, "max_inflight": 0, **behaviour},
        )
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", handler

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def downloader(base_url: str, dest: Path, **kw) -> ThreeGPPDownloader:
    opts = dict(concurrency=4, retries=3, timeout_s=10, backoff_s=0.01, backoff_max_s=0.05, trust_env=False)
    return ThreeGPPDownloader(base_url=base_url, dest=dest, **{**opts, **kw})


def file_gets(handler, name: str) -> list[tuple[str, str | None]]:
    return [(p, r) for p, r in handler.log if p.endswith(name)]


# ---------------------------------------------------------------- names and versions


def test_version_codes_round_trip():
    assert parse_version("h00") == (17, 0, 0)
    assert parse_version("i20") == (18, 2, 0)
    assert parse_version("fa3") == (15, 10, 3)
    assert parse_version("17.1.0") == (17, 1, 0)
    for code in ("000", "h00", "zzz", "g5a"):
        assert version_code(*parse_version(code)) == code
    for bad in ("h0", "h00x", "H-0", "36.0.0"):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_release_and_spec_names():
    assert [parse_release(r) for r in ("Rel-17", "rel17", "Release 18", "R15", 16)] == [17, 17, 18, 15, 16]
    assert series_dir("38.331") == "38_series"
    assert zip_name("38.331", "17.0.0") == "38331-h00.zip"
    assert zip_name("38.101-1", "i20") == "38101-1-i20.zip"
    assert str(parse_request("38.331@Rel-17")) == "38.331@Rel-17"
    assert parse_request({"spec": "38.331", "version": "18.2.0"}).version == "i20"
    for bad in ("38.331", "38331@h00", "38.331@", {"spec": "38.331"}, {"spec": "38.331", "release": 17, "version": "h00"}):
        with pytest.raises(ValueError):
            parse_request(bad)


def test_versions_in_index_reads_links_of_that_spec_only():
    html = """<html><body><a href="../">Parent</a>
    <a href="https://www.3gpp.org/ftp/Specs/archive/38_series/38.331/38331-h10.zip">38331-h10.zip</a>
    <a href="38331-h00.zip">x</a> <a href='38331-i00.zip'>x</a> <a href="38331-h21.zip?x=1">x</a>
    <a href="38331-h00.zip.part">no</a> <a href="38331-1-h30.zip">other spec</a> 38331-h99.zip (not a link)
    </body></html>"""
    versions = versions_in_index(html, "38.331")
    assert versions == ["h00", "h10", "h21", "i00"]
    assert newest_of_release(versions, 17) == "h21"
    assert newest_of_release(versions, 16) is None


# ---------------------------------------------------------------- downloads


def test_release_resolves_to_newest_version_of_that_release(serve, archive_root, tmp_path):
    base, handler = serve()
    [res] = downloader(base, tmp_path).download(["38.331@Rel-17"])
    assert (res.status, res.version, res.error) == ("downloaded", "h21", None)
    assert res.url == f"{base}/Specs/archive/38_series/38.331/38331-h21.zip"
    assert Path(res.path) == tmp_path / "Specs/archive/38_series/38.331/38331-h21.zip"
    assert Path(res.path).read_bytes() == served(archive_root, "38.331", "h21")
    assert [p for p, _ in handler.log] == ["/Specs/archive/38_series/38.331/", "/Specs/archive/38_series/38.331/38331-h21.zip"]


def test_version_builds_the_url_without_listing(serve, archive_root, tmp_path):
    base, handler = serve()
    [res] = downloader(base, tmp_path).download([{"spec": "38.413", "version": "g50"}])
    assert res.status == "downloaded"
    assert [p for p, _ in handler.log] == ["/Specs/archive/38_series/38.413/38413-g50.zip"]
    assert res.bytes == len(served(archive_root, "38.413", "g50"))


def test_completed_file_is_never_fetched_again(serve, tmp_path):
    base, handler = serve()
    first = downloader(base, tmp_path).download(["38.413@g50", "38.331@Rel-17"])
    assert [r.status for r in first] == ["downloaded", "downloaded"]
    gets_before = len(handler.log)
    second = downloader(base, tmp_path).download(["38.413@g50", "38.331@Rel-17"])
    assert [(r.status, r.bytes) for r in second] == [("cached", 0), ("cached", 0)]
    # Only the release listing is asked for again; no zip is requested.
    assert [p for p, _ in handler.log[gets_before:]] == ["/Specs/archive/38_series/38.331/"]


def test_partial_download_resumes_with_range(serve, archive_root, tmp_path):
    base, handler = serve(range_ok=True)
    full = served(archive_root, "38.331", "h00")
    d = downloader(base, tmp_path)
    part = d.local_path("38.331", "h00").with_name("38331-h00.zip.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:50_000])
    [res] = d.download(["38.331@h00"])
    assert res.status == "downloaded"
    assert file_gets(handler, "38331-h00.zip") == [("/Specs/archive/38_series/38.331/38331-h00.zip", "bytes=50000-")]
    assert res.bytes == len(full) - 50_000
    assert Path(res.path).read_bytes() == full
    assert not part.exists()


def test_partial_download_restarts_when_server_ignores_range(serve, archive_root, tmp_path):
    base, handler = serve(range_ok=False)
    full = served(archive_root, "38.331", "h00")
    d = downloader(base, tmp_path)
    part = d.local_path("38.331", "h00").with_name("38331-h00.zip.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from some other attempt" * 100)
    [res] = d.download(["38.331@h00"])
    assert res.status == "downloaded"
    assert file_gets(handler, "38331-h00.zip")[0][1] == "bytes=3500-"  # it asked; the server said 200
    assert Path(res.path).read_bytes() == full


def test_dropped_connection_resumes_where_it_stopped(serve, archive_root, tmp_path):
    path = "/Specs/archive/38_series/38.331/38331-h10.zip"
    base, handler = serve(range_ok=True, drop={path: 1})
    full = served(archive_root, "38.331", "h10")
    [res] = downloader(base, tmp_path).download(["38.331@h10"])
    assert res.status == "downloaded", res.error
    gets = file_gets(handler, "38331-h10.zip")
    assert len(gets) == 2 and gets[0] == (path, None)
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", gets[1][1]).group(1))
    assert 0 < resumed_at <= len(full) // 2
    assert Path(res.path).read_bytes() == full
    assert res.bytes == len(full)  # half, then the other half: nothing fetched twice


def _download_in_process(args) -> tuple[str, bytes]:
    base, dest = args
    [res] = downloader(base, Path(dest)).download(["38.331@h10"])
    return res.status, Path(res.path).read_bytes() if res.path and Path(res.path).is_file() else b""


def test_concurrent_processes_downloading_one_spec_share_one_complete_file(serve, archive_root, tmp_path):
    """Runs sharing the download cache: one fetches, the others wait and find it complete."""
    import multiprocessing

    base, handler = serve(range_ok=True)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        out = pool.map(_download_in_process, [(base, str(tmp_path))] * 4)
    full = served(archive_root, "38.331", "h10")
    assert all(data == full for _, data in out), [s for s, _ in out]
    assert sorted(s for s, _ in out).count("downloaded") >= 1
    assert len(file_gets(handler, "38331-h10.zip")) == 1  # fetched once, not four times


def test_transient_server_errors_are_retried(serve, archive_root, tmp_path):
    path = "/Specs/archive/38_series/38.413/38413-g50.zip"
    base, handler = serve(fail={path: 2})
    [res] = downloader(base, tmp_path, retries=3).download(["38.413@g50"])
    assert res.status == "downloaded", res.error
    assert len(file_gets(handler, "38413-g50.zip")) == 3
    assert Path(res.path).read_bytes() == served(archive_root, "38.413", "g50")


def test_retries_run_out_on_persistent_errors(serve, tmp_path):
    path = "/Specs/archive/38_series/38.413/38413-g50.zip"
    base, handler = serve(fail={path: 99})
    [res] = downloader(base, tmp_path, retries=2).download(["38.413@g50"])
    assert res.status == "failed" and "HTTP 500" in res.error
    assert len(file_gets(handler, "38413-g50.zip")) == 3


def test_body_that_keeps_ending_early_fails_and_keeps_the_part(serve, tmp_path):
    path = "/Specs/archive/38_series/38.413/38413-g50.zip"
    base, handler = serve(range_ok=False, drop={path: 99})
    d = downloader(base, tmp_path, retries=1)
    [res] = d.download(["38.413@g50"])
    assert res.status == "failed"
    assert "38.413@g50" in res.error and "ending early" in res.error
    assert not d.local_path("38.413", "g50").exists()  # never renamed into place half-done
    assert d.local_path("38.413", "g50").with_name("38413-g50.zip.part").exists()


def test_failures_are_per_spec_and_the_rest_continue(serve, tmp_path):
    base, handler = serve()
    results = downloader(base, tmp_path).download(["38.331@h99", "38.331@Rel-5", "not-a-spec@h00", "38.413@g50"])
    by = {r.request: r for r in results}
    assert by["38.413@g50"].status == "downloaded"
    assert by["38.331@h99"].status == "failed" and "38331-h99.zip not found" in by["38.331@h99"].error
    assert len(file_gets(handler, "38331-h99.zip")) == 1  # a 404 is not retried
    assert by["38.331@Rel-5"].status == "failed" and "no Rel-5 version listed" in by["38.331@Rel-5"].error
    assert by["not-a-spec@h00"].status == "failed" and "not a 3GPP spec number" in by["not-a-spec@h00"].error


def test_non_zip_response_is_refused(serve, tmp_path):
    root = tmp_path / "site"
    page = root / "Specs/archive/38_series/38.331/38331-h00.zip"
    page.parent.mkdir(parents=True)
    page.write_text("<html>Please log in</html>")
    base, _ = serve(root)
    d = downloader(base, tmp_path / "cache")
    [res] = d.download(["38.331@h00"])
    assert res.status == "failed" and "did not return a zip" in res.error
    assert not d.local_path("38.331", "h00").exists()


def test_concurrency_is_bounded(serve, tmp_path):
    base, handler = serve(delay=0.2)
    specs = [f"38.331@{v}" for v in VERSIONS_38331] + ["38.413@g50"]
    results = downloader(base, tmp_path, concurrency=2).download(specs)
    assert all(r.status == "downloaded" for r in results)
    assert handler.max_inflight == 2


def test_offline_says_so_quickly(tmp_path):
    base = closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(AcquireError) as err:
        downloader(base, tmp_path, retries=2).download(["38.331@Rel-17", "38.413@g50"])
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert f"cannot reach {base}" in msg and "offline?" in msg and "corpus.path" in msg
    assert elapsed < 5, elapsed
    assert {r.status for r in err.value.results} == {"failed"}
    assert all(r.offline for r in err.value.results)


def test_offline_release_request_uses_the_cache(serve, tmp_path):
    base, _ = serve()
    downloader(base, tmp_path).download(["38.331@Rel-17"])
    [res] = downloader(closed_port_url(), tmp_path, retries=0).download(["38.331@Rel-17", "38.331@h21"])[:1]
    assert (res.status, res.version) == ("cached", "h21")


# ---------------------------------------------------------------- the stage


def stage_ctx(run_dir: Path, base_url: str, dest: Path, specs, **extra) -> StageContext:
    acquire = OmegaConf.load(REPO / "conf/acquire/default.yaml")
    acquire.specs = specs
    acquire.downloader.update(base_url=base_url, dest=str(dest), retries=1, backoff_s=0.01, backoff_max_s=0.02)
    cfg = OmegaConf.create({"acquire": acquire, "corpus": {"path": None}, **extra})
    return pipeline.context("acquire", run_dir, cfg, NullTracker())


def test_stage_config_is_valid(compose, tmp_path):
    conf = compose(f"cache_dir={tmp_path}").acquire
    assert conf.downloader.dest == f"{tmp_path}/3gpp"  # downloads live in the shared cache
    d = ThreeGPPDownloader(**{k: v for k, v in conf.downloader.items() if k != "_target_"})
    assert d.base_url == "https://www.3gpp.org/ftp"
    assert d.url("38.331", "h00") == "https://www.3gpp.org/ftp/Specs/archive/38_series/38.331/38331-h00.zip"
    assert list(conf.specs) == []


def test_stage_downloads_extracts_and_writes_manifest(serve, tmp_path):
    base, handler = serve()
    cache = tmp_path / "cache"
    # An unquoted YAML 38.413 arrives as a float; the stage must still read it as a spec number.
    specs = OmegaConf.create(["38.331@Rel-17", {"spec": 38.413, "version": "g50"}])
    m1 = acquire_stage.run(stage_ctx(tmp_path / "run1", base, cache, specs))
    assert (m1["acquire/downloaded"], m1["acquire/cached"], m1["acquire/failed"]) == (2, 0, 0)
    assert m1["acquire/bytes"] > 0 and m1["acquire/documents"] == 4
    manifest = json.loads((tmp_path / "run1/acquired.json").read_text())
    by = {e["request"]: e for e in manifest["specs"]}
    assert by["38.331@Rel-17"]["status"] == "ok" and by["38.331@Rel-17"]["version"] == "h21"
    docx = Path(next(d for d in by["38.331@Rel-17"]["documents"] if d.endswith(".docx")))
    assert docx.name == "38331-h21.docx"
    assert "T300" in "\n".join(p.text for p in Document(docx).paragraphs)
    assert docx.is_relative_to(cache / "extracted")
    assert manifest["documents"] == sorted(manifest["documents"])

    # A second run, cold run dir but warm cache: nothing downloaded, same manifest bytes.
    zip_gets = len([p for p, _ in handler.log if p.endswith(".zip")])
    m2 = acquire_stage.run(stage_ctx(tmp_path / "run2", base, cache, specs))
    assert (m2["acquire/downloaded"], m2["acquire/cached"], m2["acquire/bytes"]) == (0, 2, 0)
    assert len([p for p, _ in handler.log if p.endswith(".zip")]) == zip_gets
    assert (tmp_path / "run2/acquired.json").read_bytes() == (tmp_path / "run1/acquired.json").read_bytes()


def test_stage_with_no_specs_touches_no_network(tmp_path):
    t0 = time.monotonic()
    metrics = acquire_stage.run(stage_ctx(tmp_path / "run", closed_port_url(), tmp_path / "cache", []))
    assert time.monotonic() - t0 < 1
    assert json.loads((tmp_path / "run/acquired.json").read_text()) == {"specs": [], "documents": []}
    assert metrics["acquire/downloaded"] == metrics["acquire/failed"] == 0
    assert not (tmp_path / "cache").exists()


def test_stage_offline_without_corpus_path_stops_with_advice(tmp_path):
    ctx = stage_ctx(tmp_path / "run", closed_port_url(), tmp_path / "cache", ["38.331@h00"])
    with pytest.raises(StageError, match="corpus.path"):
        acquire_stage.run(ctx)
    assert not (tmp_path / "run/acquired.json").exists()


def test_stage_offline_with_corpus_path_records_failures_and_goes_on(tmp_path):
    ctx = stage_ctx(tmp_path / "run", closed_port_url(), tmp_path / "cache", ["38.331@h00"], corpus={"path": str(tmp_path)})
    metrics = acquire_stage.run(ctx)
    assert metrics["acquire/failed"] == 1
    [entry] = json.loads((tmp_path / "run/acquired.json").read_text())["specs"]
    assert entry["status"] == "failed" and "offline?" in entry["error"]


def test_stage_refused_archive_fails_only_that_spec(serve, archive_root, tmp_path):
    root = tmp_path / "site"
    evil = root / "Specs/archive/38_series/38.331/38331-h00.zip"
    evil.parent.mkdir(parents=True)
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../../escaped.docx", b"x")
    _spec_zip(root / "Specs/archive/38_series/38.413/38413-g50.zip", "38.413", "g50")
    base, _ = serve(root)
    metrics = acquire_stage.run(stage_ctx(tmp_path / "run", base, tmp_path / "cache", ["38.331@h00", "38.413@g50"]))
    assert metrics["acquire/failed"] == 1 and metrics["acquire/downloaded"] == 1
    by = {e["request"]: e for e in json.loads((tmp_path / "run/acquired.json").read_text())["specs"]}
    assert by["38.331@h00"]["status"] == "failed"
    assert "38331-h00.zip" in by["38.331@h00"]["error"] and "path traversal" in by["38.331@h00"]["error"]
    assert by["38.413@g50"]["status"] == "ok" and by["38.413@g50"]["documents"]
    assert not list(tmp_path.rglob("escaped.docx"))


def test_acquired_specs_are_what_convert_converts(serve, tmp_path, compose):
    """acquire -> convert through the pipeline: the downloaded release is converted, and the
    built-in sample corpus does not stand in when the user asked for specs."""
    base, _ = serve()
    cfg = compose(f"cache_dir={tmp_path / 'cache'}", "acquire.specs=[38.331@Rel-17]",
                  f"acquire.downloader.base_url={base}", "acquire.downloader.retries=1")
    run = tmp_path / "run"
    run.mkdir()
    m = pipeline.run(run, cfg, NullTracker(), ["acquire", "convert"])
    assert m["acquire/downloaded"] == 1 and m["convert/docs"] >= 1
    docs = sorted(p.name for p in (run / "documents").glob("*.md"))
    assert "38331-h21.md" in docs
    assert not any(d.startswith("operator-rollout-notes") for d in docs)
