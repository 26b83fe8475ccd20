"""The services against servers on real sockets: loopback fakes replaying Ollama's and LM Studio's
documented API shapes (faults included), the real embedded llama.cpp server, and a real `ollama`
when one is on PATH."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import jsonschema
import pytest

from conftest import REPO
from components.llm.audit import Audit
from components.llm.cache import ResponseCache
from components.llm.errors import InvalidResponse, ModelMissing, ServiceError, ServiceUnavailable
from components.llm.extraction import json_schema, parse
from components.llm.privacy import Privacy
from components.llm.resilience import Resilience
from components.llm.routing import Routing
from components.llm.services import EmbeddedLlamaService, OllamaService, OpenAICompatibleService, split_thinking
from components.llm.resilience import chain as build_chain
from tests.llm_fakes import GOOD, FakeLMStudio, FakeOllama
from tests.fixtures.ports import free_port

SCHEMA = json_schema()
MSGS = [{"role": "user", "content": "Extract from: RRC (Radio Resource Control) per TS 38.331."}]
FAST = Resilience(retries=3, backoff_initial_s=0.01, backoff_max_s=0.02, breaker_failures=2,
                  breaker_reset_s=60)


@pytest.fixture
def ollama():
    servers = []

    def make(**kw):
        servers.append(FakeOllama(**kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


@pytest.fixture
def lmstudio():
    servers = []

    def make(**kw):
        servers.append(FakeLMStudio(**kw))
        return servers[-1]
    yield make
    for s in servers:
        s.close()



# --- Ollama ------------------------------------------------------------------------------------

def test_ollama_request_follows_the_native_chat_api(ollama):
    srv = ollama()
    svc = OllamaService(base_url=srv.url, num_ctx=8192, top_p=0.9, seed=7, keep_alive="10m")
    svc.start()
    reply = svc.chat_json(MSGS, SCHEMA, max_tokens=64, temperature=0.0)
    body = srv.posts("/api/chat")[-1]["body"]
    assert body["stream"] is False and body["format"] == SCHEMA  # the schema goes in `format`
    assert body["think"] is False  # Qwen3 would think by default
    assert body["options"] == {"temperature": 0.0, "num_predict": 64, "num_ctx": 8192, "top_p": 0.9, "seed": 7}
    assert body["keep_alive"] == "10m" and body["messages"] == MSGS and body["model"] == "qwen3:1.7b"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.finish_reason) == (42, 17, "stop")
    assert reply.request_bytes == len(srv.posts("/api/chat")[-1]["raw"]) and reply.response_bytes > 100
    assert json.loads(reply.content)["acronyms"][0]["acronym"] == "RRC"  # the reply, as sent
    assert svc.health()["version"] == "0.9.6"


def test_ollama_host_without_scheme_is_accepted():
    assert OllamaService(base_url="127.0.0.1:11434").base_url == "http://127.0.0.1:11434"


@pytest.mark.parametrize("action", ["thinking", "think_tag"])
def test_ollama_thinking_is_stripped_counted_and_never_stored(ollama, tmp_path, action):
    srv = ollama(script={"qwen3:1.7b": [action]})
    svc = OllamaService(base_url=srv.url, cache=ResponseCache(dir=str(tmp_path / "cache")),
                        audit=Audit(include_content=True), resilience=FAST)
    chain = build_chain(svc).bind(tmp_path)
    chain.start()
    reply = chain.chat_json(MSGS, SCHEMA, 64)
    assert json.loads(reply.content) == GOOD and reply.thinking_stripped > 0
    assert chain.metrics()["service/ollama/qwen3_1.7b/thinking_stripped"] == 1
    chain.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"RRC" in stored and b"SECRET-REASONING" not in stored  # cache and audit, content on


def test_ollama_thinking_only_reply_cut_at_the_limit_is_asked_again_with_more_room(ollama):
    srv = ollama(script={"qwen3:1.7b": ["thinking_only"]})
    chain = build_chain(OllamaService(base_url=srv.url, resilience=FAST))
    reply = chain.chat_json(MSGS, SCHEMA, 100)
    budgets = [r["body"]["options"]["num_predict"] for r in srv.posts("/api/chat")]
    assert budgets == [100, 200] and reply.length_retried and reply.thinking_stripped > 0
    assert json.loads(reply.content) == GOOD


def test_ollama_model_without_thinking_mode_is_asked_without_the_field(ollama):
    srv = ollama(models=("llama3.2:1b",), script={"llama3.2:1b": ["no_think_support", "no_think_support"]})
    svc = OllamaService(base_url=srv.url, model="llama3.2:1b")
    svc.chat_json(MSGS, SCHEMA, 32)
    svc.chat_json(MSGS, SCHEMA, 32)
    sent = [("think" in r["body"]) for r in srv.posts("/api/chat")]
    assert sent == [True, False, False]  # learned once per model


def test_ollama_missing_models_are_named_with_the_pull_command(ollama, caplog):
    srv = ollama(models=("qwen3:1.7b",))
    routing = Routing(complex_model="gemma3:4b", fallback_model="llama3.2:1b")
    svc = OllamaService(base_url=srv.url, model="qwen3:1.7b", routing=routing)
    svc.start()
    assert set(svc.missing_models) == {"gemma3:4b", "llama3.2:1b"}
    assert "ollama pull gemma3:4b" in caplog.text
    with pytest.raises(ModelMissing, match="ollama pull llama3.2:1b") as e:
        OllamaService(base_url=srv.url, model="llama3.2:1b").start()
    assert e.value.failure == "final"


def test_ollama_pull_missing_streams_api_pull(ollama):
    srv = ollama(models=("qwen3:1.7b",))
    svc = OllamaService(base_url=srv.url, routing=Routing(complex_model="gemma3:4b"), pull_missing=True)
    svc.start()
    assert [r["body"] for r in srv.posts("/api/pull")] == [{"model": "gemma3:4b", "stream": True}]
    assert svc.missing_models == {}
    with pytest.raises(ModelMissing, match="file does not exist"):
        OllamaService(base_url=srv.url, model="nope:1b", pull_missing=True).start()


def test_ollama_routing_and_model_fallback_end_to_end(ollama, tmp_path):
    srv = ollama(models=("qwen3:1.7b", "gemma3:4b", "llama3.2:1b"),
                 script={"qwen3:1.7b": [("status", 500, "llama runner process has terminated")] * 6})
    svc = OllamaService(base_url=srv.url, resilience=FAST, audit=Audit(),
                        routing=Routing(complex_model="gemma3:4b", complex_above=0.5, fallback_model="llama3.2:1b"))
    chain = build_chain(svc).bind(tmp_path)
    chain.start()
    models = [chain.chat_json(MSGS, SCHEMA, 32, complexity=c, chunk_id=f"c{i}").model
              for i, c in enumerate([0.9, 0.1, 0.2])]
    assert models == ["gemma3:4b", "llama3.2:1b", "llama3.2:1b"]
    tags, m = chain.tags(), chain.metrics()
    assert json.loads(tags["service.models"]) == {"ollama/gemma3:4b": 1, "ollama/llama3.2:1b": 2}
    assert m["service/ollama/qwen3_1.7b/breaker_opens"] == 1 and m["service/ollama/qwen3_1.7b/retries"] == 4
    rows = [json.loads(l) for l in open(tmp_path / "audit.jsonl")]
    assert [r["status"] for r in rows if r["model"] == "qwen3:1.7b"] == [500] * 6
    assert {r["chunk_id"] for r in rows} == {"c0", "c1", "c2"}
    chain.close()


def test_ollama_unreachable_is_unavailable_quickly():
    svc = OllamaService(base_url=f"http://127.0.0.1:{free_port()}", timeout_s=2)
    t0 = time.perf_counter()
    with pytest.raises(ServiceUnavailable, match="cannot reach Ollama at .*ollama serve") as e:
        svc.start()
    assert time.perf_counter() - t0 < 5 and e.value.failure == "transient"


def test_context_window_overflow_is_reported(ollama, caplog):
    srv = ollama()
    chain = build_chain(OllamaService(base_url=srv.url, num_ctx=256, resilience=FAST))
    long = [{"role": "user", "content": "RRC " * 400}]
    chain.chat_json(long, SCHEMA, 64, chunk_id="big")
    assert "exceed the context window" in caplog.text and "big" in caplog.text
    assert chain.metrics()["service/context_overflows"] == 1


# --- LM Studio (OpenAI-compatible) ---------------------------------------------------------------

def lm(srv, **kw) -> OpenAICompatibleService:
    kw.setdefault("resilience", FAST)
    return OpenAICompatibleService(base_url=f"{srv.url}/v1", model="qwen3-1.7b", name="lmstudio",
                                   server="lmstudio", **kw)


def test_openai_compatible_sends_json_schema_response_format_and_the_key(lmstudio):
    srv = lmstudio()
    svc = lm(srv, api_key="sk-test-secret", seed=3)
    svc.start()
    reply = svc.chat_json(MSGS, SCHEMA, 64)
    req = srv.posts("/v1/chat/completions")[-1]
    assert req["body"]["response_format"]["type"] == "json_schema"
    assert req["body"]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert req["body"]["max_tokens"] == 64 and req["body"]["seed"] == 3
    assert req["headers"]["authorization"] == "Bearer sk-test-secret"
    assert (reply.prompt_tokens, reply.completion_tokens) == (30, 12)
    assert "sk-test-secret" not in repr(vars(svc))


def test_lmstudio_model_not_loaded_says_how_to_load_it(lmstudio):
    srv = lmstudio(models=("gemma-3-4b-it",))
    with pytest.raises(ModelMissing, match="lms load qwen3-1.7b"):
        lm(srv).start()


def test_lmstudio_429_with_retry_after_is_waited_for(lmstudio, tmp_path):
    srv = lmstudio(script=[("429", 1)])
    chain = build_chain(lm(srv, audit=Audit())).bind(tmp_path)
    t0 = time.perf_counter()
    reply = chain.chat_json(MSGS, SCHEMA, 32)
    assert time.perf_counter() - t0 >= 1.0 and reply.retries == 1
    rows = [json.loads(l) for l in open(tmp_path / "audit.jsonl")]
    assert [r["status"] for r in rows] == [429, 200] and rows[0]["failure"] == "transient"
    chain.close()


def test_lmstudio_500s_open_the_breaker_and_the_fallback_serves(lmstudio):
    srv, backup = lmstudio(script=[("status", 500)] * 100), lmstudio()
    fb = OpenAICompatibleService(base_url=f"{backup.url}/v1", model="qwen3-1.7b", name="backup")
    chain = build_chain(lm(srv, fallback=fb))
    replies = [chain.chat_json(MSGS, SCHEMA, 32) for _ in range(4)]
    assert {r.service for r in replies} == {"backup"} and all(r.fallback for r in replies)
    assert len(srv.posts("/v1/chat/completions")) == 6  # 2 requests x 3 attempts, then open
    assert chain.breaker.state == "open" and chain.metrics()["service/lmstudio/qwen3-1.7b/breaker_opens"] == 1


def test_lmstudio_malformed_json_is_final_and_not_retried(lmstudio):
    srv = lmstudio(script=["malformed", "no_choices"])
    chain = build_chain(lm(srv))
    with pytest.raises(InvalidResponse, match="malformed JSON") as e:
        chain.chat_json(MSGS, SCHEMA, 32)
    assert e.value.failure == "final" and len(srv.posts("/v1/chat/completions")) == 1
    with pytest.raises(InvalidResponse, match="no choices"):
        chain.chat_json(MSGS, SCHEMA, 32)


@pytest.mark.parametrize("action", ["reasoning", "think_tag", "thinking_only"])
def test_lmstudio_reasoning_is_stripped(lmstudio, action):
    srv = lmstudio(script=[action])
    reply = build_chain(lm(srv)).chat_json(MSGS, SCHEMA, 32)
    assert json.loads(reply.content) == GOOD and reply.thinking_stripped > 0
    assert reply.length_retried == (action == "thinking_only")


def test_lmstudio_truncated_output_is_retried_once_with_more_room(lmstudio):
    srv = lmstudio(script=["truncated", "truncated"])
    reply = build_chain(lm(srv, resilience=Resilience(length_retry_max_tokens=100))).chat_json(MSGS, SCHEMA, 64)
    assert [r["body"]["max_tokens"] for r in srv.posts("/v1/chat/completions")] == [64, 100]
    assert reply.finish_reason == "length" and reply.length_retried  # recorded, not looped


def test_lmstudio_slow_reply_times_out_as_transient_and_is_retried(lmstudio):
    srv = lmstudio(script=[("slow", 1.5)])
    reply = build_chain(lm(srv, timeout_s=0.5)).chat_json(MSGS, SCHEMA, 32)
    assert reply.retries == 1 and json.loads(reply.content) == GOOD


def test_4xx_is_final(lmstudio):
    srv = lmstudio(script=[("status", 400)])
    with pytest.raises(ServiceError) as e:
        build_chain(lm(srv)).chat_json(MSGS, SCHEMA, 32)
    assert e.value.status == 400 and e.value.failure == "final"


def test_concurrency_is_bounded_per_service(lmstudio):
    from concurrent.futures import ThreadPoolExecutor

    srv = lmstudio(script=[("slow", 0.3)] * 6)
    svc = lm(srv, max_concurrency=2)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: svc.chat_json(MSGS, SCHEMA, 16), range(6)))
    assert time.perf_counter() - t0 >= 0.9  # 6 requests, 2 at a time, 0.3 s each


def test_split_thinking():
    assert split_thinking("<think>a b</think>\n{}") == ("{}", 3)
    assert split_thinking("<think>never closed") == ("", 12)
    assert split_thinking("{}", "reasoning") == ("{}", 9)
    assert split_thinking("{}") == ("{}", 0)


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine, to put a second server on at the same port."""
    import socket

    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


OWN_ADDRESS = _own_address()


@pytest.mark.skipif(OWN_ADDRESS is None, reason="this machine has no non-loopback IPv4 address "
                    "for a second server on the same port")
@pytest.mark.parametrize("local", [True, False], ids=["loopback-service", "remote-service"])
def test_cutting_connections_wakes_the_readers_of_its_server_and_no_other(local):
    """A stop cuts this process's connections to the service's server, by address and port: a
    reader blocked on it wakes, and a connection to another host on the same port carries on."""
    import socket
    import threading

    ours_at, other_at = ("127.0.0.1", OWN_ADDRESS) if local else (OWN_ADDRESS, "127.0.0.1")
    with socket.create_server((ours_at, 0)) as ours:
        port = ours.getsockname()[1]
        with socket.create_server((other_at, port)) as other:
            url = f"http://localhost:{port}/v1" if local else f"https://{ours_at}:{port}/v1"
            svc = OpenAICompatibleService(base_url=url, model="m",
                                          privacy=Privacy(local_only=False))
            to_ours, to_other = socket.create_connection((ours_at, port)), socket.create_connection((other_at, port))
            with to_ours, to_other, ours.accept()[0], other.accept()[0] as other_side:
                woke = []
                reader = threading.Thread(target=lambda: woke.append(to_ours.recv(10)), daemon=True)
                reader.start()
                time.sleep(0.2)
                assert svc.cut_connections() == 1
                reader.join(5)
                assert woke == [b""], "the reader blocked on the server's connection did not wake"
                to_other.sendall(b"still up")
                assert other_side.recv(10) == b"still up"


# --- real servers ------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("ollama") is None,
                    reason="no `ollama` binary on PATH (not obtainable on this machine: no "
                           "ollama.com); the wire format is covered by the loopback fake above")
def test_real_ollama_answers_with_schema_json():
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    proc = None
    try:
        svc = OllamaService(base_url=host, model=os.environ.get("OLLAMA_TEST_MODEL", "qwen3:1.7b"))
        try:
            svc.start()
        except ServiceUnavailable:
            proc = subprocess.Popen(["ollama", "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)
            svc.start()
        reply = build_chain(svc).chat_json(MSGS, SCHEMA, 256)
        parsed = parse(reply.content)
        assert parsed.error is None, parsed.error
        assert "<think>" not in reply.content
    finally:
        if proc:
            proc.terminate()


def test_embedded_llama_cpp_server_answers_schema_valid_json():
    svc = EmbeddedLlamaService(n_ctx=2048, n_parallel=1, threads=2)
    svc.start()
    try:
        assert svc.base_url.startswith("http://127.0.0.1:")
        # The server speaks the OpenAI API on loopback, as a client outside this process sees it.
        models = httpx.get(f"{svc.base_url}/v1/models", timeout=10).json()
        assert any(m["id"] == svc.model for m in models["data"])
        assert svc.health()["status"] == "up"
        # The extraction schema at its smallest, so a 135M model finishes within the budget.
        small = json_schema(max_acronyms=1, max_spec_refs=1, qa_per_chunk=1, max_entities=1)
        reply = svc.chat_json(MSGS, small, max_tokens=1024)
        assert reply.completion_tokens > 0 and reply.model == svc.model
        # Constrained by the grammar, with room to finish: the reply is valid against the schema.
        assert reply.finish_reason == "stop", reply.finish_reason
        jsonschema.validate(json.loads(reply.content), small)
        base = svc.base_url
    finally:
        svc.close()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/v1/models", timeout=2)


# In a child process: llama.cpp's destructor, waiting for a request with the GIL held, never
# returns, and a test that hung in pytest's own process would hang the suite.
_CLOSE_IN_FLIGHT = r"""
import json, threading, time
from components.llm.services import EmbeddedLlamaService
svc = EmbeddedLlamaService(n_ctx=4096, n_parallel=1, threads=2)
svc.start()
text = " ".join(f"The AMF forwards registration request {i} to the SMF while the UE is in CM-IDLE."
                for i in range(40))  # about 800 prompt tokens: several seconds to read here
schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
out = {}
def ask():
    try:
        svc.chat_json([{"role": "user", "content": "Summarise: " + text}], schema, max_tokens=400)
        out["reply"] = "answered"
    except Exception as exc:
        out["reply"] = type(exc).__name__
worker = threading.Thread(target=ask, daemon=True)
worker.start()
time.sleep(1.5)
t0 = time.perf_counter()
svc.close()
out["close_s"] = time.perf_counter() - t0
worker.join(10)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_closing_the_embedded_server_with_a_request_in_flight_cuts_it_and_returns():
    try:
        done = subprocess.run([sys.executable, "-c", _CLOSE_IN_FLIGHT], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("close() did not return within 120 s: llama.cpp's destructor waited for the "
                    "request still in flight")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # The request was cut, not answered: close() neither hung nor waited for the reply. How long
    # it took (the llama.cpp decode call in progress: 6.6 s here alone, 18 s with the machine
    # busy) is in the message, not asserted, as a load-dependent time would make the test flaky.
    assert out["reply"] != "answered", out
