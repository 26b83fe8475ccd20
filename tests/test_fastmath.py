"""The CPU exponential of components/training/fastmath.py agrees with MLX's own functions, values
and gradients, and a model given its SwiGLU computes what it computed before."""
from __future__ import annotations

import numpy as np
import pytest

from components.training.lora import import_mlx

mx = import_mlx()
import mlx.nn as nn  # noqa: E402

from components.training import fastmath  # noqa: E402

pytestmark = pytest.mark.skipif(not fastmath.on_cpu(), reason="fastmath serves the CPU; on Metal the library's functions run")


def test_exp_is_float32_accurate_over_its_whole_range_and_finite_beyond_it():
    x = np.linspace(-87, 88, 200_001, dtype=np.float32)
    got = np.asarray(fastmath.exp(mx.array(x))).astype(np.float64)
    rel = np.abs(got / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 2e-6, rel.max()
    far = np.asarray(fastmath.exp(mx.array([-1e4, -100.0, 100.0, 1e4])))
    assert np.all(np.isfinite(far)) and far[0] < 1e-37 and far[3] > 1e38


def _grads(f, *args):
    return mx.grad(lambda *a: (f(*a) * mx.arange(a[0].size).reshape(a[0].shape) / a[0].size).sum(),
                   argnums=tuple(range(len(args))))(*args)


def test_swiglu_and_its_gradient_match_mlx_lms():
    from mlx_lm.models.activations import swiglu

    rng = np.random.default_rng(0)
    gate, x = (mx.array(rng.normal(0, 4, (3, 17, 64)).astype(np.float32)) for _ in range(2))
    assert mx.allclose(fastmath.swiglu(gate, x), swiglu(gate, x), rtol=1e-5, atol=1e-6).item()
    for ours, theirs in zip(_grads(fastmath.swiglu, gate, x), _grads(swiglu, gate, x)):
        assert mx.allclose(ours, theirs, rtol=1e-4, atol=1e-6).item()


def test_cross_entropy_and_logsumexp_match_mlx():
    rng = np.random.default_rng(1)
    logits = mx.array(rng.normal(0, 6, (4, 9, 3000)).astype(np.float32))
    targets = mx.array(rng.integers(0, 3000, (4, 9)).astype(np.int32))
    assert mx.allclose(fastmath.cross_entropy(logits, targets), nn.losses.cross_entropy(logits, targets),
                       rtol=1e-5, atol=1e-5).item()
    ours = mx.grad(lambda l: fastmath.cross_entropy(l, targets).sum())(logits)
    theirs = mx.grad(lambda l: nn.losses.cross_entropy(l, targets).sum())(logits)
    assert mx.allclose(ours, theirs, rtol=1e-4, atol=1e-7).item()
    assert mx.allclose(fastmath.logsumexp(logits, axis=-1, keepdims=True),
                       mx.logsumexp(logits, axis=-1, keepdims=True), rtol=1e-6, atol=1e-5).item()


def test_a_llama_given_the_fast_swiglu_computes_what_it_did(monkeypatch):
    from mlx_lm.models import activations, llama

    monkeypatch.setattr(llama, "swiglu", activations.swiglu)
    args = llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=500,
                           tie_word_embeddings=True)
    mx.random.seed(0)
    model = llama.Model(args)
    tokens = mx.array(np.random.default_rng(2).integers(0, 500, (2, 24)).astype(np.int32))
    before = model(tokens)
    monkeypatch.setattr(llama, "scaled_dot_product_attention", llama.scaled_dot_product_attention)
    assert fastmath.install(model) and llama.swiglu is fastmath.swiglu
    assert llama.scaled_dot_product_attention is fastmath.attention
    assert fastmath.install(model)  # twice is once
    assert mx.allclose(model(tokens), before, rtol=1e-4, atol=1e-5).item()


def test_a_model_without_mlx_lms_swiglu_is_left_alone():
    class Other:
        pass

    assert fastmath.install(Other()) is False


@pytest.mark.parametrize("mask", ["causal", "causal-offset", "bool", "additive", None])
def test_attention_and_its_gradient_match_mlx(mask):
    rng = np.random.default_rng(3)
    b, heads, groups, n, d = 2, 6, 2, 5, 16
    s = n + 3 if mask in ("causal-offset", "bool") else n
    q = mx.array(rng.normal(size=(b, heads, n, d)).astype(np.float32))
    k, v = (mx.array(rng.normal(size=(b, groups, s, d)).astype(np.float32)) for _ in range(2))
    m = {"causal": "causal", "causal-offset": "causal", None: None,
         # after 3 cached tokens, the first row left-padded by 2, as mlx-lm's batch cache masks it
         "bool": mx.array((np.arange(s)[None] <= np.arange(n)[:, None] + 3)[None, None]
                          & (np.arange(s) >= np.array([[2], [0]]))[:, None, None]),
         "additive": mx.array(rng.normal(size=(1, heads, n, s)).astype(np.float32))}[mask]

    def ours(q, k, v):
        return fastmath.attention(q, k, v, None, 0.25, m)

    def theirs(q, k, v):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=m)

    assert mx.allclose(ours(q, k, v), theirs(q, k, v), rtol=1e-5, atol=1e-5).item()
    for a, t in zip(_grads(ours, q, k, v), _grads(theirs, q, k, v)):
        assert mx.allclose(a, t, rtol=1e-4, atol=1e-5).item()


def test_attention_to_no_key_is_zero_not_nan():
    q, k, v = (mx.ones((1, 2, 3, 4)) for _ in range(3))
    hidden = mx.array(np.tril(np.ones((3, 3), bool)) & (np.arange(3) >= 1))[None, None]  # query 0 sees nothing
    out = np.asarray(fastmath.attention(q, k, v, None, 0.5, hidden))
    assert np.all(np.isfinite(out)) and np.all(out[:, :, 0] == 0) and np.allclose(out[:, :, 1:], 1)
