"""The exponential, at the speed of a multiply, where MLX runs on the CPU.

MLX's CPU backend takes the C library's ``exp`` one element at a time: about 18 ns an element
here, so SmolLM2-135M's SwiGLU activation of a batch of 96 tokens (2.7 ms a block) cost more than
its gate projection's matmul, and every softmax (the attention's, the loss's over the 49,152-token
vocabulary) paid the same price per element. Below, ``exp`` is built from multiplies and adds (2^n x e^r,
|r| <= ln(2)/2, a degree-7 polynomial; relative error under 1e-6, float32's own is 6e-8), which
``mx.compile`` fuses into one vectorised loop: the activation 4x faster; with the attention's and
the loss's softmax done the same way, a LoRA training step of SmolLM2-135M 1.24x as fast and the
multiple-choice scoring 1.15x (``benchmarks/fastmath.py``).

``install(model)`` gives a model this SwiGLU and attention, and ``cross_entropy`` and ``logsumexp``
serve the training loss and the option scores, only while the default device is the CPU: on
Metal ``exp`` is one GPU instruction, and they are the library's own functions there.
"""
from __future__ import annotations

import math
import sys

_LOG2E = 1.4426950408889634
# ln 2 in two parts (Cephes' Cody-Waite split): n * _LN2_HI is exact in float32, so the reduced
# argument keeps its precision however large n is.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
# Taylor coefficients of e^r: the first term left out is under 1e-8 for |r| <= ln(2) / 2.
_COEFFS = tuple(1 / math.factorial(k) for k in range(8))
_built: dict = {}


def on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def exp(x):
    """e^x for float32 ``x``; arguments are clipped to [-87, 88], where float32 neither
    underflows to a denormal nor overflows."""
    import mlx.core as mx

    x = mx.clip(x, -87.0, 88.0)
    n = mx.floor(x * _LOG2E + 0.5)
    r = x - n * _LN2_HI - n * _LN2_LO
    p = _COEFFS[-1]
    for c in reversed(_COEFFS[:-1]):
        p = p * r + c
    # 2^n from its bits (exponent field n + 127); n has no gradient, the polynomial carries it.
    return p * mx.stop_gradient(((n.astype(mx.int32) + 127) << 23).view(mx.float32))


def _functions() -> dict:
    """The custom functions, made once: each has its vjp written out, so the backward pass costs
    a few multiplies instead of the polynomial's own derivative."""
    if _built:
        return _built
    import mlx.core as mx

    # Compiled, the polynomial is one loop over the data, in the evaluation's forward passes too
    # (a training step is compiled whole). Not shapeless: the bit cast has no shape rule.
    fused = mx.compile(lambda gate, x: gate / (1.0 + exp(-gate)) * x)
    fused_lse = mx.compile(lambda x, top: mx.log(mx.sum(exp(x - top), axis=-1, keepdims=True)) + top)

    @mx.custom_function
    def swiglu(gate, x):
        return fused(gate, x)

    @swiglu.vjp
    def _swiglu_vjp(primals, cotangent, output):
        gate, x = primals
        s = 1.0 / (1.0 + exp(-gate))
        gs = gate * s
        return cotangent * x * (s + gs * (1.0 - s)), cotangent * gs

    @mx.custom_function
    def cross_entropy(logits, targets):
        top = mx.stop_gradient(mx.max(logits, axis=-1, keepdims=True))
        lse = mx.log(mx.sum(exp(logits - top), axis=-1)) + top[..., 0]
        return lse - mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]

    @cross_entropy.vjp
    def _cross_entropy_vjp(primals, cotangent, output):
        logits, targets = primals
        top = mx.max(logits, axis=-1, keepdims=True)
        e = exp(logits - top)
        soft = e / mx.sum(e, axis=-1, keepdims=True)
        hot = mx.arange(logits.shape[-1])[None] == targets[..., None]
        return cotangent[..., None] * (soft - hot), mx.zeros_like(targets)

    @mx.custom_function
    def softmax(scores, allowed):
        top = mx.stop_gradient(mx.max(scores, axis=-1, keepdims=True))
        e = mx.where(allowed, exp(scores - top), 0.0)
        return e / mx.maximum(mx.sum(e, axis=-1, keepdims=True), 1e-30)

    @softmax.vjp
    def _softmax_vjp(primals, cotangent, output):
        return output * (cotangent - mx.sum(cotangent * output, axis=-1, keepdims=True)), mx.zeros_like(primals[1])

    _built.update(swiglu=swiglu, cross_entropy=cross_entropy, lse=fused_lse, softmax=softmax)
    return _built


def swiglu(gate, x):
    """silu(gate) * x, as mlx-lm's ``swiglu``."""
    return _functions()["swiglu"](gate, x)


def cross_entropy(logits, targets):
    """Per-position cross-entropy of ``logits`` (..., vocab) against integer ``targets`` (...),
    as ``mlx.nn.losses.cross_entropy`` with its defaults (which it is, off the CPU)."""
    import mlx.core as mx
    import mlx.nn as nn

    if not on_cpu():
        return nn.losses.cross_entropy(logits, targets)
    return _functions()["cross_entropy"](logits.astype(mx.float32), targets)


def logsumexp(x, axis: int = -1, keepdims: bool = False):
    """``mx.logsumexp`` (which it is, off the CPU)."""
    import mlx.core as mx

    if not on_cpu():
        return mx.logsumexp(x, axis=axis, keepdims=keepdims)
    x = mx.moveaxis(x, axis, -1)
    out = _functions()["lse"](x, mx.max(x, axis=-1, keepdims=True))
    return mx.moveaxis(out, -1, axis) if keepdims else out[..., 0]


def attention(queries, keys, values, cache, scale: float, mask, sinks=None):
    """mlx-lm's ``scaled_dot_product_attention`` with the softmax's exponential above: keys and
    values shared by groups of query heads, ``mask`` None, "causal", a boolean array (True:
    attend) or an additive one, broadcastable to (batch, heads, queries, keys). Quantized caches
    and attention sinks go to mlx-lm's."""
    import mlx.core as mx
    from mlx_lm.models import base

    if hasattr(cache, "bits") or sinks is not None:
        return base.scaled_dot_product_attention(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
    b, heads, n, d = queries.shape
    groups, s = keys.shape[1], keys.shape[2]
    q = (queries * scale).reshape(b, groups, heads // groups, n, d)
    scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)  # (batch, groups, heads per group, n, s)
    allowed = mx.array(True)
    if isinstance(mask, str):
        allowed = mx.arange(s)[None] <= mx.arange(n)[:, None] + (s - n)
    elif mask is not None:
        m = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        m = (m.reshape(m.shape[0], groups, heads // groups, *m.shape[2:]) if m.shape[1] == heads
             else mx.expand_dims(m, 2))
        if m.dtype == mx.bool_:
            allowed = m
        else:
            scores = scores + m
    p = _functions()["softmax"](mx.where(allowed, scores, -1e30), allowed)
    return (p @ mx.expand_dims(values, 2)).reshape(b, heads, n, d)


def install(model) -> bool:
    """Give ``model`` this SwiGLU and attention when the default device is the CPU and its
    architecture's module calls mlx-lm's (llama, Mistral, Qwen); True when it did. The swap is of
    the module's names, so every model of that architecture in this process gets them: they agree
    with mlx-lm's to float32 rounding, values and gradients (``tests/test_fastmath.py``)."""
    if not on_cpu():
        return False
    from mlx_lm.models import activations, base

    module = sys.modules.get(type(model).__module__)
    done = False
    for name, theirs, ours in (("swiglu", activations.swiglu, swiglu),
                               ("scaled_dot_product_attention", base.scaled_dot_product_attention, attention)):
        current = getattr(module, name, None)
        if current is theirs:
            setattr(module, name, ours)
        done = done or getattr(module, name, None) is ours
    return done
