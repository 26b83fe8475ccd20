"""The executor group: a local pool and a Ray cluster give the same results, the same per-item
failures, a bounded window of tasks in flight and a cancel that does not wait.

The Ray tests start a one-node cluster as a user does (``ray start --head``, token auth) and
drive it from subprocesses: Ray reads its auth mode when imported, and a driver's threads have
no business in the pytest process, whose later tests fork.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from components.executor import ExecutorError, Failed, LocalExecutor, LocalPool, RayExecutor
from conftest import REPO
from runner.config import ConfigError, build
from tests.fixtures.mlflow_store import fresh_store

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is an optional extra, not installed here: "
                               "pip install '.[ray]' (CI installs it)")


def _square(x: int) -> int:
    return x * x


def _fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    return x


def _die_on_two(x: int) -> int:
    if x == 2:
        os._exit(3)  # what an out-of-memory kill or a crash in C code looks like to the pool
    time.sleep(0.2)
    return x


# -- local ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [LocalPool(1), LocalPool(3, "thread"), LocalPool(2, "process")])
def test_local_results_carry_their_index(pool):
    with LocalExecutor().map_unordered(_square, list(range(7)), local=pool) as batch:
        got = dict(batch)
    assert got == {i: i * i for i in range(7)}


def test_results_come_as_they_finish_not_in_input_order():
    def slow_first(x: int) -> int:
        time.sleep(0.6 if x == 0 else 0.0)
        return x

    order = [i for i, _ in LocalExecutor().map_unordered(slow_first, [0, 1, 2], local=LocalPool(3))]
    assert sorted(order) == [0, 1, 2] and order[-1] == 0


@pytest.mark.parametrize("pool", [LocalPool(1), LocalPool(2, "thread"), LocalPool(2, "process")])
def test_a_task_that_raises_is_a_failed_result_and_the_batch_goes_on(pool):
    got = dict(LocalExecutor().map_unordered(_fail_on_two, [1, 2, 3], local=pool))
    assert got[0] == 1 and got[2] == 3
    assert got[1] == Failed("ValueError: two is not allowed", lost_worker=False)


def test_a_worker_that_dies_is_a_lost_worker_not_an_exception():
    got = dict(LocalExecutor().map_unordered(_die_on_two, [1, 2, 3, 4], local=LocalPool(2, "process")))
    assert set(got) == {0, 1, 2, 3}
    assert isinstance(got[1], Failed) and got[1].lost_worker and "BrokenProcessPool" in got[1].error


def test_max_in_flight_bounds_the_tasks_running_at_once():
    lock, running, peak = threading.Lock(), [0], [0]

    def task(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return x

    got = dict(LocalExecutor().map_unordered(task, list(range(12)), max_in_flight=3,
                                             local=LocalPool(8)))
    assert sorted(got) == list(range(12)) and peak[0] == 3


def test_a_cancel_stops_submitting_and_does_not_wait_for_queued_tasks():
    cancel, started = threading.Event(), []

    def task(x: int) -> int:
        started.append(x)
        time.sleep(0.3)
        return x

    t0 = time.perf_counter()
    got = []
    for i, res in LocalExecutor().map_unordered(task, list(range(20)), cancel=cancel, local=LocalPool(2)):
        got.append(i)
        cancel.set()
    elapsed = time.perf_counter() - t0
    assert len(got) == 1 and elapsed < 2.0  # 20 tasks x 0.3 s / 2 workers would be 3 s
    time.sleep(0.4)  # a task already running finishes on its own; none queued starts
    assert len(started) <= 4  # the two that finished, and the two the workers took next


# -- the config group ----------------------------------------------------------------------


def test_the_group_defaults_to_local_and_builds_ray_without_connecting(compose):
    assert isinstance(build(compose().executor, "executor"), LocalExecutor)
    ex = build(compose("executor=ray", "executor.address=ray://head.example:10001").executor, "executor")
    assert isinstance(ex, RayExecutor) and ex.opts.address == "ray://head.example:10001"
    assert ex.remote and ex.parallelism(LocalPool(4)) == 0  # nothing ran on a cluster yet


@pytest.mark.parametrize("override, message", [
    ("+executor.adress=auto", "executor.adress: unknown key"),
    ("executor.max_retries=-1", "executor.max_retries: Input should be greater than or equal to 0"),
    ("+executor.workers=4", "executor.workers: unknown key"),
])
def test_a_wrong_executor_key_fails_naming_it(compose, override, message):
    group = "executor=ray" if "retries" in override or "adress" in override else "executor=local"
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build(compose(group, override).executor, "executor")


def test_ray_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ExecutorError, match=r"executor=ray needs Ray.*pip install '\.\[ray\]'"):
        RayExecutor().map_unordered(_square, [1])


@needs_ray
def test_an_address_where_nothing_answers_fails_fast_naming_the_key():
    from tests.fixtures.ports import free_port

    address = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ExecutorError, match=rf"executor\.address={address}: cannot connect to Ray: "
                                            r"nothing answers there"):
        RayExecutor(address=address, connect_timeout_s=2).map_unordered(_square, [1])
    assert time.perf_counter() - t0 < 5  # Ray alone retries for minutes


def test_the_convert_stage_reads_the_executor_group():
    from runner.stages import convert

    assert "executor" in convert.CONFIG


# -- Ray -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    from tests.fixtures.ray_head import ray_head

    with ray_head(cpus=2) as (address, env):
        yield address, dict(env, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


@pytest.fixture
def on_cluster(cluster, tmp_path):
    """(address, environment) for a runner on the cluster, with its own MLflow store."""
    address, env = cluster
    return address, dict(env, MLFLOW_TRACKING_URI=fresh_store(tmp_path / "mlflow.db"))


DRIVER = r'''
import json, os, sys, threading, time
from pathlib import Path
from components.executor import Failed, RayExecutor

address, marks = sys.argv[1], Path(sys.argv[2])

def square(x):
    return x * x

def fail_on_two(x):
    if x == 2:
        raise ValueError("two is not allowed")
    return x

def die_on_two(x):
    if x == 2:
        os._exit(3)
    return x

def mark(item):  # each task leaves its start and end time in a folder
    folder, x, seconds = item
    t0 = time.time()
    time.sleep(seconds)
    (Path(folder) / f"{x}.json").write_text(json.dumps([t0, time.time()]))
    return os.getpid()

def batch(name, n, seconds=0.5):
    folder = marks / name
    folder.mkdir(parents=True)
    return folder, [(str(folder), x, seconds) for x in range(n)]

def peak(folder):
    spans = [json.loads(f.read_text()) for f in folder.iterdir()]
    return max(sum(a <= t < b for a, b in spans) for t, _ in spans)

out = {}
ex = RayExecutor(address=address, max_retries=0)
out["squares"] = sorted(ex.map_unordered(square, list(range(6))))
out["raise"] = {i: (r.__dict__ if isinstance(r, Failed) else r)
                for i, r in ex.map_unordered(fail_on_two, [0, 2, 4])}
out["die"] = {i: (r.__dict__ if isinstance(r, Failed) else r)
              for i, r in ex.map_unordered(die_on_two, [0, 2, 4])}
folder, items = batch("window-1", 4)
pids = [r for _, r in ex.map_unordered(mark, items, max_in_flight=1)]
out["peak_window_1"] = peak(folder)
folder, items = batch("default", 6, seconds=1.0)  # time for a second worker to start
pids += [r for _, r in ex.map_unordered(mark, items)]
out["peak_default"] = peak(folder)
out["worker_processes"] = len(set(pids))
folder, items = batch("cancel", 12)
cancel = threading.Event()
t0 = time.time()
got = []
for i, _ in ex.map_unordered(mark, items, cancel=cancel, max_in_flight=2):
    got.append(i)
    cancel.set()
out["cancel_results"] = len(got)
out["cancel_seconds"] = time.time() - t0
time.sleep(1.5)
out["cancel_started"] = len(list(folder.iterdir()))
out["parallelism"] = ex.parallelism(None)
ex.close()
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
@needs_ray
def test_ray_gives_results_failures_a_bounded_window_and_a_quick_cancel(cluster, tmp_path):
    address, env = cluster
    done = subprocess.run([sys.executable, "-c", DRIVER, address, str(tmp_path / "marks")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["squares"] == [[i, i * i] for i in range(6)]
    assert out["raise"]["0"] == 0 and out["raise"]["2"] == 4
    assert out["raise"]["1"] == {"error": "ValueError: two is not allowed", "lost_worker": False}
    # Only the task whose worker died is lost; Ray runs the others in other workers.
    assert out["die"]["0"] == 0 and out["die"]["2"] == 4
    assert out["die"]["1"]["lost_worker"] is True and "WorkerCrashedError" in out["die"]["1"]["error"]
    assert out["peak_window_1"] == 1  # max_in_flight bounds the whole cluster, from one driver
    assert out["peak_default"] == 2  # by default: one task per cluster CPU
    assert out["worker_processes"] <= 3  # workers live on between tasks (and batches)
    assert out["cancel_results"] == 1 and out["cancel_seconds"] < 3
    assert out["cancel_started"] <= 3  # of 12: nothing more was submitted
    assert out["parallelism"] == 2


def runner(args: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "runner", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    done.log = done.stdout + done.stderr
    return done


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@needs_ray
def test_convert_on_ray_writes_the_same_documents_and_errors_as_local(on_cluster, tmp_path):
    from components.documents.sample_corpus import write_sample_corpus

    address, env = on_cluster
    corpus = write_sample_corpus(tmp_path / "sample")
    with zipfile.ZipFile(corpus / "broken-spec.docx", "w") as zf:  # passes the precheck, fails in Docling
        zf.writestr("[Content_Types].xml", "<Types/>")
    runs = {}
    for name, extra in [("local", ["docling.workers=2"]),
                        ("ray", ["executor=ray", f"executor.address={address}"])]:
        run_dir = tmp_path / name
        out = runner([f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / ('cache-' + name)}",
                      f"corpus.path={corpus}", "stages=[convert]", *extra], env)
        assert out.returncode == 0 and "Traceback" not in out.log, out.log[-3000:]
        runs[name] = run_dir
    local, ray = (tree(runs[n] / "documents") for n in ("local", "ray"))
    assert local == ray
    manifest = json.loads(local["manifest.json"])
    assert [m["status"] for m in manifest].count("success") == 6
    [bad] = [m for m in manifest if m["status"] == "failed"]
    assert bad["source"] == "broken-spec.docx" and bad["failure"] == "final"
    assert bad["error"] == "corrupt DOCX: the package has no word/document.xml"
    metrics = json.loads((runs["ray"] / "metrics.json").read_text())
    assert metrics["convert/workers"] == 2 and metrics["convert/docs"] == 6
    # The driver keeps the conversion cache: a second run on the cluster converts nothing.
    again = runner([f"hydra.run.dir={tmp_path / 'ray2'}", f"cache_dir={tmp_path / 'cache-ray'}",
                    f"corpus.path={corpus}", "stages=[convert]", "executor=ray",
                    f"executor.address={address}", "stage_cache=false"], env)
    assert again.returncode == 0, again.log[-3000:]
    assert json.loads((tmp_path / "ray2" / "metrics.json").read_text())["convert/cache_hits"] == 6
    assert tree(tmp_path / "ray2" / "documents") == local


@pytest.mark.slow
@needs_ray
def test_a_signal_during_convert_on_ray_stops_quickly_and_the_rerun_redoes_nothing(on_cluster, tmp_path):
    from tests.fixtures.interrupt import interrupt_convert

    address, env = on_cluster
    r = interrupt_convert(tmp_path, env, signal.SIGTERM, "executor=ray", f"executor.address={address}")
    assert r.returncode == 130, r.log[-3000:]
    assert r.stop_seconds < 10, r.stop_seconds
    assert "Traceback" not in r.log and "Resume with: python -m runner" in r.log
    assert r.rerun.returncode == 0, r.rerun.log[-3000:]
    assert r.metrics["convert/cache_hits"] >= r.finished  # nothing finished is converted again
    assert r.metrics["convert/docs"] == r.total  # and nothing is lost


@pytest.mark.slow  # a runner process importing Ray: 11 s on 2 cores
@needs_ray
def test_no_cluster_at_the_address_is_a_stage_error_naming_the_key(tmp_path):
    from tests.fixtures.ports import free_port

    env = dict(os.environ, MLFLOW_TRACKING_URI=fresh_store(tmp_path / "mlflow.db"),
               RAY_AUTH_MODE="disabled")
    address = f"127.0.0.1:{free_port()}"
    out = runner([f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
                  "stages=[convert]", "executor=ray", f"executor.address={address}"], env)
    assert out.returncode == 1 and "Traceback" not in out.log, out.log[-3000:]
    assert f"executor.address={address}: cannot connect to Ray" in out.log


def records(run_dir: Path) -> dict[str, dict]:
    """extractions.jsonl by chunk, less what differs between any two runs (time taken)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "seconds"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return {r["chunk_id"]: strip(r) for r in map(json.loads, (run_dir / "extractions.jsonl").open())}


@pytest.fixture(scope="module")
def chunked(cluster, tmp_path_factory) -> Path:
    """The sample corpus converted and chunked once (locally) for every extract test on the
    cluster: what they check is the extract stage, which each runs alone on a copy."""
    from components.documents.sample_corpus import write_sample_corpus

    root = tmp_path_factory.mktemp("chunked")
    corpus = write_sample_corpus(root / "sample")
    env = dict(cluster[1], MLFLOW_TRACKING_URI=fresh_store(root / "mlflow.db"))
    out = runner([f"hydra.run.dir={root / 'run'}", f"cache_dir={root / 'cache'}", f"corpus.path={corpus}",
                  "stages=[convert,process]"], env)
    assert out.returncode == 0, out.log[-3000:]
    return root / "run"


def extraction_dir(chunked: Path, run_dir: Path) -> Path:
    """A run directory holding what the extract stage reads (documents/, chunks.jsonl)."""
    run_dir.mkdir(parents=True)
    shutil.copytree(chunked / "documents", run_dir / "documents")
    shutil.copy(chunked / "chunks.jsonl", run_dir / "chunks.jsonl")
    return run_dir


def extract_args(run_dir: Path, cache: Path, url: str, *extra: str) -> list[str]:
    return [f"hydra.run.dir={run_dir}", f"cache_dir={cache}", "stages=[extract]", "service=lmstudio",
            f"service.base_url={url}/v1", "extraction.max_chunks=6", "extraction.concurrency=2", *extra]


@pytest.mark.slow
@needs_ray
def test_extract_on_ray_writes_the_same_records_as_local_with_requests_bounded(on_cluster, chunked, tmp_path):
    from tests.llm_fakes import FakeLMStudio

    class Timed(FakeLMStudio):  # when each chat request ran, for the bound on requests at once
        spans: list = []

        def handle(self, req):
            t0 = time.time()
            out = super().handle(req)
            if req["path"] == "/v1/chat/completions":
                self.spans.append((t0, time.time()))
            return out

    address, env = on_cluster
    server = Timed(script=[("slow", 0.3)] * 10_000)
    try:
        runs = {}
        for name, extra in [("local", []), ("ray", ["executor=ray", f"executor.address={address}"])]:
            Timed.spans = []
            run_dir = extraction_dir(chunked, tmp_path / name)
            out = runner(extract_args(run_dir, tmp_path / f"cache-{name}", server.url, *extra), env)
            assert out.returncode == 0 and "Traceback" not in out.log, out.log[-3000:]
            runs[name] = run_dir
            peak = max(sum(a <= t < b for a, b in Timed.spans) for t, _ in Timed.spans)
            assert peak <= 2, (name, peak)  # extraction.concurrency, from the driver or the cluster
        local, ray = records(runs["local"]), records(runs["ray"])
        assert ray == local and len(local) == 6
        assert sum(r["llm"] is not None for r in ray.values()) >= 3  # the model was asked
        metrics = json.loads((runs["ray"] / "metrics.json").read_text())
        assert metrics["extract/nodes"] == 1 and metrics["service/requests"] >= 3
        # The node's actor runs where the driver runs: its audit rows are in the run directory.
        audit = [json.loads(line) for line in (runs["ray"] / "audit.jsonl").open()]
        assert {a.get("chunk_id") for a in audit} >= {c for c, r in ray.items() if r["llm"]}
    finally:
        server.close()


def asked(partial: Path) -> int:
    """Records in the partial log that the model answered (a torn last line is not one)."""
    n = 0
    for line in partial.read_text().splitlines() if partial.is_file() else []:
        try:
            n += json.loads(line).get("llm") is not None
        except ValueError:
            pass
    return n


@pytest.mark.slow
@needs_ray
def test_a_signal_during_extract_on_ray_stops_quickly_and_the_rerun_keeps_each_chunk_once(on_cluster, chunked,
                                                                                         tmp_path):
    from tests.llm_fakes import FakeLMStudio

    address, env = on_cluster
    server = FakeLMStudio(script=[("slow", 1.0)] * 10_000)
    run_dir = extraction_dir(chunked, tmp_path / "run")
    args = [sys.executable, "-m", "runner", *extract_args(run_dir, tmp_path / "cache", server.url,
                                                            "executor=ray", f"executor.address={address}")]
    try:
        p = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        partial = run_dir / "extractions.partial.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and asked(partial) < 2:
            time.sleep(0.05)
        t0 = time.perf_counter()
        p.send_signal(signal.SIGTERM)
        log = p.communicate(timeout=60)[0]
        stopped = time.perf_counter() - t0
        assert p.returncode == 130, log[-3000:]
        assert stopped < 10, stopped
        assert "Traceback" not in log and "Resume with: python -m runner" in log
        kept = {json.loads(line)["chunk_id"] for line in partial.open()}
        rerun = runner(args[3:], env)
        assert rerun.returncode == 0, rerun.log[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["extract/resumed_chunks"] >= len(kept) >= 2  # nothing finished is asked again
        recs = [json.loads(line) for line in (run_dir / "extractions.jsonl").open()]
        assert len(recs) == len({r["chunk_id"] for r in recs}) == 6
    finally:
        server.close()


@pytest.mark.slow
@needs_ray
def test_extract_on_ray_with_the_real_embedded_server_started_on_the_node(on_cluster, chunked, tmp_path):
    address, env = on_cluster
    run_dir = extraction_dir(chunked, tmp_path / "run")
    out = runner([f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'cache'}", "stages=[extract]",
                  "extraction.max_chunks=3", "executor=ray", f"executor.address={address}"], env)
    assert out.returncode == 0 and "Traceback" not in out.log, out.log[-3000:]
    assert "extract: node " in out.log and "service embedded" in out.log
    recs = records(run_dir)
    asked = [r for r in recs.values() if r["llm"] is not None]
    assert asked and all(r["llm"]["model"] for r in asked)  # llama.cpp answered on the node
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["extract/nodes"] == 1 and metrics["service/requests"] >= len(asked)
    assert (run_dir / "audit.jsonl").is_file()


def test_cluster_helpers_merge_node_metrics_and_tell_node_local_servers():
    from components.llm.cluster import merge_metrics, merge_tags, node_local

    assert node_local({"name": "embedded"})  # no URL: the server is started where the actor runs
    assert node_local({"base_url": "http://127.0.0.1:11434"}) and node_local({"base_url": "http://localhost:1234/v1"})
    assert not node_local({"base_url": "https://gpu-box.lab:8000/v1"})
    # Ollama's own docs write OLLAMA_HOST without a scheme; one loopback rule (privacy's) for both.
    assert node_local({"base_url": "127.0.0.1:11434"}) and not node_local({"base_url": "gpu-box.lab:11434"})
    merged = merge_metrics([{"service/requests": 4.0, "service/cache_hit_rate": 0.5, "service/x/latency_p50_s": 1.0},
                            {"service/requests": 6.0, "service/cache_hit_rate": 0.25, "service/x/latency_p50_s": 3.0}])
    assert merged == {"service/requests": 10.0, "service/cache_hit_rate": 0.375, "service/x/latency_p50_s": 2.0}
    tags = merge_tags([{"service.used": "ollama", "service.targets": "ollama/a", "service.fallback": "false"},
                       {"service.used": "embedded,ollama", "service.targets": "embedded/b,ollama/a",
                        "service.fallback": "true"},
                       {"service.used": "embedded", "service.targets": "none", "service.fallback": "false"}])
    assert tags == {"service.used": "embedded,ollama", "service.targets": "embedded/b,ollama/a",
                    "service.fallback": "true"}


def test_where_replies_are_cached_does_not_change_what_is_asked():
    from runner.stages.extract import _asking

    a = {"name": "ollama", "model": "m", "cache": {"dir": "/a"}, "fallback": {"name": "embedded", "cache": {"dir": "/a"}}}
    b = {"name": "ollama", "model": "m", "cache": {"dir": "/b"}, "fallback": {"name": "embedded", "cache": {"dir": "/b"}}}
    assert _asking(a) == _asking(b)
    assert _asking(a) != _asking({**a, "model": "other"})
