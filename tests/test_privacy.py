"""Local first, scrubbing, credentials and the audit log: no secret and no content leaves."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter

import pytest

from components.llm import credentials
from components.llm.audit import Audit
from components.llm.errors import EndpointRefused
from components.llm.privacy import Privacy, Scrubber, is_loopback
from components.llm.resilience import Resilience
from components.llm.resilience import chain as build_chain
from components.llm.services import OpenAICompatibleService
from tests.llm_fakes import FakeLMStudio

MSGS = [{"role": "user", "content": "RRC per TS 38.331"}]


@pytest.fixture
def lmstudio():
    srv = FakeLMStudio()
    yield srv
    srv.close()


@pytest.fixture
def cred_file(tmp_path, monkeypatch):
    path = tmp_path / "credentials.json"
    monkeypatch.setenv(credentials.ENV_FILE, str(path))
    for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GATEWAY_API_KEY", "GATEWAY_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    return path


def write(path, obj, mode=0o600):
    path.write_text(json.dumps(obj))
    os.chmod(path, mode)


# --- local only --------------------------------------------------------------------------------

@pytest.mark.parametrize("url,local", [
    ("http://127.0.0.1:11434", True), ("http://localhost:1234/v1", True), ("http://[::1]:8000", True),
    ("127.0.0.5:11434", True), ("http://0.0.0.0:11434", True), ("https://api.example.com/v1", False),
    ("http://192.168.1.20:11434", False), ("http://localhost.evil.com", False)])
def test_loopback_detection(url, local):
    assert is_loopback(url) is local


def test_local_only_refuses_a_remote_endpoint_when_the_config_is_built(compose):
    from runner.config import ConfigError, build

    cfg = compose("service=openai", "service.base_url=https://api.example.com/v1")
    with pytest.raises(ConfigError, match="privacy.local_only=true refuses remote endpoints"):
        build(cfg.service, "service")
    svc = build(compose("service=openai", "service.base_url=https://api.example.com/v1",
                        "privacy.local_only=false").service, "service")
    assert svc.remote


def test_remote_plain_http_is_refused_even_when_remote_is_allowed():
    with pytest.raises(EndpointRefused, match="plain http") as e:
        OpenAICompatibleService(base_url="http://10.0.0.8:8000/v1", privacy=Privacy(local_only=False))
    assert e.value.failure == "final"


def test_tls_is_verified_with_a_custom_ca_bundle(tmp_path):
    import certifi

    svc = OpenAICompatibleService(base_url="https://gw.example/v1",
                                  privacy=Privacy(local_only=False, ca_bundle=certifi.where()))
    assert svc.privacy.verify() == certifi.where()
    assert Privacy(local_only=False).verify() is True  # never a silent verify=False
    svc.http  # the client builds with the bundle (a wrong path would fail here)
    svc.close()


# --- scrubbing ---------------------------------------------------------------------------------

def test_scrubbing_patterns():
    s = Scrubber([r"CELL-\d{4}"])
    counts: Counter = Counter()
    text = ("Mail ops.team@example.com; UE at 10.23.4.5 and 2001:db8::8a2e:370:7334; IMSI 310150123456789, "
            "IMEI 490154203237518, call +46 70 123 45 67 or (555) 123-4567; site CELL-0042. "
            "Per TS 38.331 V16.4.0 clause 5.3.3.1, timer T310 at 12:30:45, ratio 1.2.3. Gateway 192.0.2.9.")
    out = s.text(text, counts)
    for leaked in ("ops.team@", "10.23.4.5", "2001:db8", "310150123456789", "490154203237518",
                   "+46 70", "123-4567", "CELL-0042", "192.0.2.9"):
        assert leaked not in out
    for kept in ("TS 38.331 V16.4.0", "clause 5.3.3.1", "T310", "12:30:45", "1.2.3"):
        assert kept in out  # telecom content survives
    assert counts == Counter(email=1, ipv4=2, ipv6=1, subscriber_id=2, phone=2, custom=1)


def test_a_bad_user_pattern_fails_naming_it():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Privacy(patterns=["(unclosed"])


def test_requests_to_a_remote_endpoint_are_scrubbed_first(tmp_path):
    import httpx

    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{"finish_reason": "stop", "message": {"content": "{}"}}],
                                         "usage": {}})
    svc = OpenAICompatibleService(base_url="https://gw.example/v1", model="m",
                                  privacy=Privacy(local_only=False), transport=httpx.MockTransport(handler),
                                  resilience=Resilience(retries=1))
    chain = build_chain(svc)
    chain.chat_json([{"role": "user", "content": "contact a@b.org from 192.0.2.7"}], {}, 8)
    assert seen[0]["messages"][0]["content"] == "contact [EMAIL] from [IP]"
    m = chain.metrics()
    assert m["service/scrubbed"] == 2 and m["service/scrubbed_email"] == 1


def test_loopback_requests_are_not_scrubbed_by_default(lmstudio):
    chain = build_chain(OpenAICompatibleService(base_url=f"{lmstudio.url}/v1", model="qwen3-1.7b"))
    chain.chat_json([{"role": "user", "content": "UE 10.0.0.1"}], {}, 8)
    assert lmstudio.posts("/v1/chat/completions")[0]["body"]["messages"][0]["content"] == "UE 10.0.0.1"


# --- credentials -------------------------------------------------------------------------------

def test_environment_first_then_the_credentials_file(cred_file, monkeypatch):
    write(cred_file, {"gateway": {"api_key": "sk-from-file", "base_url": "http://127.0.0.1:9/v1"}})
    key, url = credentials.resolve("gateway")
    assert key.reveal() == "sk-from-file" and url == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("GATEWAY_API_KEY", "sk-from-env")
    key, url = credentials.resolve("gateway")
    assert key.reveal() == "sk-from-env" and url == "http://127.0.0.1:9/v1"
    assert credentials.resolve("gateway", api_key="sk-config")[0].reveal() == "sk-config"
    assert "sk-" not in repr(key) and "sk-" not in f"{key}"


def test_file_readable_by_others_warns(cred_file, caplog):
    write(cred_file, {"openai": {"api_key": "sk-x"}}, mode=0o644)
    with caplog.at_level(logging.WARNING):
        assert credentials.resolve("openai")[0].reveal() == "sk-x"
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    assert "sk-x" not in caplog.text


def test_world_writable_file_is_refused(cred_file):
    write(cred_file, {"openai": {"api_key": "sk-x"}}, mode=0o666)
    with pytest.raises(credentials.CredentialsError, match="writable by every user"):
        credentials.resolve("openai")


def test_broken_file_does_not_quote_its_content(cred_file):
    cred_file.write_text('{"openai": {"api_key": "sk-leaky-123" oops}}')
    os.chmod(cred_file, 0o600)
    with pytest.raises(credentials.CredentialsError) as e:
        credentials.resolve("openai")
    assert "sk-leaky" not in str(e.value) and "line 1" in str(e.value)


def test_key_from_the_file_is_sent_and_never_logged_or_audited(cred_file, lmstudio, tmp_path, caplog):
    secret = "sk-audit-do-not-leak-77"
    write(cred_file, {"lmstudio": {"api_key": secret}})
    svc = OpenAICompatibleService(base_url=f"{lmstudio.url}/v1", model="qwen3-1.7b", name="lmstudio",
                                  audit=Audit(), resilience=Resilience(retries=1))
    lmstudio.script = [("status", 401)]
    chain = build_chain(svc).bind(tmp_path)
    with caplog.at_level(logging.DEBUG):
        chain.start()
        with pytest.raises(Exception) as e:
            chain.chat_json(MSGS, {}, 8, chunk_id="c1")
        chain.chat_json(MSGS, {}, 8, chunk_id="c2")
    chain.close()
    assert lmstudio.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"
    audit = (tmp_path / "audit.jsonl").read_text()
    assert secret not in audit + caplog.text + str(e.value) + json.dumps(chain.tags())
    rows = [json.loads(l) for l in audit.splitlines()]
    assert [r["status"] for r in rows] == [401, 200] and rows[0]["failure"] == "final"
    assert set(rows[1]) >= {"time", "service", "endpoint", "model", "request_bytes", "response_bytes",
                            "latency_s", "status", "retries", "scrubbed", "cache_hit", "chunk_id"}
    assert "RRC" not in audit  # no content by default


def test_audit_content_only_when_asked(lmstudio, tmp_path):
    chain = build_chain(OpenAICompatibleService(base_url=f"{lmstudio.url}/v1", model="qwen3-1.7b",
                                    audit=Audit(include_content=True))).bind(tmp_path)
    chain.chat_json(MSGS, {}, 8)
    chain.close()
    row = json.loads((tmp_path / "audit.jsonl").read_text())
    assert row["messages"] == MSGS and "acronyms" in row["reply"]
