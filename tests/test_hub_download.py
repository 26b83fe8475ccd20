"""The real Hugging Face download code (huggingface_hub.snapshot_download through ModelSource)
against a loopback server that speaks the Hub's API (HF_ENDPOINT), serving a tiny llama model
made here: downloaded once into the cache, loaded and run by mlx-lm, found offline afterwards,
a clear message naming the command when it is missing, and the token sent but never shown."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.training.blas import use_fast_blas

use_fast_blas()

TOKEN = "hf_loopbackSECRET123"
SHA = "a" * 40


def tiny_model(d: Path) -> dict[str, bytes]:
    """A 2-layer llama with a word-level tokenizer: the files of a Hub repo."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "the", "amf", "smf", "upf", "handles", "registration", "sessions",
             "user", "plane", "function", "."]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            chat_template="{% for m in messages %}{{ m['content'] }} {% endfor %}"
                            ).save_pretrained(str(d))
    config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5,
              "vocab_size": len(words), "tie_word_embeddings": True, "rope_theta": 10000.0}
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs(**config))
    mx.save_safetensors(str(d / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (d / "config.json").write_text(json.dumps(config))
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


class Hub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    repos: dict[str, bool] = {}  # repo -> gated
    auth_seen: list[str | None] = []
    requests: list[str] = []

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head=False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool):
        path = self.path.split("?")[0]
        self.requests.append(f"{self.command} {path}")
        self.auth_seen.append(self.headers.get("Authorization"))
        parts = path.strip("/").split("/")
        api = parts[0] == "api"
        repo = "/".join(parts[2:4] if api else parts[0:2])
        if repo not in self.repos:
            return self._send(404, b'{"error":"Repository not found"}',
                              {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)
        if self.repos[repo] and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"error":"gated"}', {"X-Error-Code": "GatedRepo",
                                                         "Content-Type": "application/json"}, head)
        if api and parts[4] == "revision":
            body = {"id": repo, "modelId": repo, "sha": SHA, "private": False,
                    "siblings": [{"rfilename": f} for f in sorted(self.files)]}
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        if api and parts[4] == "tree":
            body = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in sorted(self.files.items())]
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
        if not api and parts[2] == "resolve":
            name = "/".join(parts[4:])
            if name not in self.files:
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            b = self.files[name]
            return self._send(200, b, {"X-Repo-Commit": SHA, "ETag": f'"{hashlib.sha1(b).hexdigest()}"',
                                       "Content-Type": "application/octet-stream"}, head)
        return self._send(404, b"", {}, head)

    def do_GET(self):
        self._route(head=False)

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    Hub.files = tiny_model(tmp_path_factory.mktemp("repo"))
    Hub.repos = {"test-org/tiny-llama": False, "test-org/gated-llama": True}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def env(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))  # no stored login of this machine's
    Hub.requests.clear()
    Hub.auth_seen.clear()
    return tmp_path


def model(repo: str, **kw):
    from components.training.models import ModelSource

    return ModelSource(name="tiny", source="hf", hf_repo=repo, **kw)


def test_download_once_then_load_and_generate_then_offline(env, monkeypatch):
    from components.training import lora

    path = Path(model("test-org/tiny-llama").check())
    assert (path / "model.safetensors").read_bytes() == Hub.files["model.safetensors"]
    assert str(path).startswith(str(env / "hf"))
    assert any(r.startswith("GET /test-org/tiny-llama/resolve/") for r in Hub.requests)
    m, tok = lora.load(path)
    out = lora.generate_answers(m, tok, [[{"role": "user", "content": "the amf handles"}]], 3)
    assert isinstance(out[0], str)
    # Cached: no more traffic, and offline (either switch) finds it.
    Hub.requests.clear()
    assert Path(model("test-org/tiny-llama").check()) == path
    assert Hub.requests == []
    assert Path(model("test-org/tiny-llama", offline=True).check()) == path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(model("test-org/tiny-llama").check()) == path


def test_offline_and_missing_names_the_download_command(env, monkeypatch):
    from components.training.models import ModelUnavailable

    with pytest.raises(ModelUnavailable, match=r"hf download test-org/tiny-llama --revision v2"):
        model("test-org/tiny-llama", offline=True, revision="v2").check()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE=1"):
        model("test-org/tiny-llama").check()
    assert Hub.requests == []  # offline means no traffic at all


def test_missing_repo_says_so(env):
    from components.training.models import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="test-org/nope was not found"):
        model("test-org/nope").check()


def test_gated_repo_uses_the_credentials_chain_token_and_never_shows_it(env, monkeypatch, caplog):
    from components.training.models import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="gated.*hf auth login") as exc:
        model("test-org/gated-llama").check()
    assert TOKEN not in str(exc.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's credentials chain, not our config
    with caplog.at_level(logging.DEBUG):
        path = Path(model("test-org/gated-llama").check())
    assert (path / "config.json").is_file()
    assert f"Bearer {TOKEN}" in Hub.auth_seen
    assert TOKEN not in caplog.text
