"""Multiple choice scored by log-likelihood, the lm-evaluation-harness way.

Each option is scored as the continuation of the question in the model's chat template (the
assistant's turn): the mean log-probability of its tokens. The highest-scoring option is the
model's answer. No text is generated, so a tuned model's answer format cannot change the score.
A question's prompt goes through the model once, many questions to a batch; its options continue
from the cached keys and values. The part every prompt of a batch shares (the chat template's
system turn, about half of a probe's prompt) goes through once for the whole batch.
"""
from __future__ import annotations

from typing import Callable

from components.mcq import MCQ
from components.training import fastmath
from components.training.objective import head as _head


def prompt_tokens(tokenizer, question: str, system: str | None) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))


def _forward(model, head, x, cache=None):
    """Log-probabilities over the vocabulary at every position of ``x``."""
    return _logprobs(head(model.model(x, cache=cache)) if head is not None else model(x, cache=cache))


def _logprobs(logits):
    import mlx.core as mx

    logits = logits.astype(mx.float32)
    return logits - fastmath.logsumexp(logits, axis=-1, keepdims=True)


def one_by_one(model, head, prompts: list[list[int]], conts: list[list[list[int]]]) -> list[list[float]]:
    """The plain way, for models whose cache cannot be batched: each option in full, prompt and
    option, one sequence at a time."""
    import mlx.core as mx

    scores = []
    for prompt, cs in zip(prompts, conts):
        row = []
        for c in cs:
            lp = _forward(model, head, mx.array([prompt + c]))[0]
            row.append(sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(c)) / len(c))
        scores.append(row)
    return scores


def _option_pass(model, head, cache, rows: list[tuple[int, list[int]]]) -> list[float]:
    """Sum of the log-probabilities of each option's tokens after its first, continuing its
    question's row of ``cache`` (``rows``: (question row, option tokens)), for options of
    similar length at a time so that padding stays small."""
    import copy

    import mlx.core as mx
    import numpy as np

    out = [0.0] * len(rows)
    order = sorted((i for i in range(len(rows)) if len(rows[i][1]) > 1), key=lambda i: len(rows[i][1]))
    while order:
        width = 2 * len(rows[order[0]][1]) - 1  # a bucket: up to twice the shortest
        take = [i for i in order if len(rows[i][1]) - 1 <= width]
        order = order[len(take):]
        rest = max(len(rows[i][1]) for i in take) - 1
        sub = [copy.copy(c) for c in cache]
        for c in sub:
            c.filter(mx.array([rows[i][0] for i in take]))  # a row per option: its question's keys
        y = np.zeros((len(take), rest), dtype=np.int32)
        flat, tgt = [], []
        for r, i in enumerate(take):
            toks = rows[i][1]
            y[r, :len(toks) - 1] = toks[:-1]
            flat += [r * rest + j for j in range(len(toks) - 1)]
            tgt += toks[1:]
        h = model.model(mx.array(y), cache=sub) if head is not None else model(mx.array(y), cache=sub)
        h = h.reshape(len(take) * rest, h.shape[-1])[mx.array(flat)]
        logits = (head(h) if head is not None else h).astype(mx.float32)
        got = mx.take_along_axis(logits, mx.array(tgt)[:, None], axis=-1)[:, 0] - fastmath.logsumexp(logits, axis=-1)
        got = np.array(got)
        at = 0
        for i in take:
            n = len(rows[i][1]) - 1
            out[i] = float(got[at:at + n].sum())
            at += n
    return out


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens at the start of every prompt, leaving each at least one of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(max(0, n)):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(0, n)


def _batched(model, head, prompts: list[list[int]], conts: list[list[list[int]]]) -> list[list[float]] | None:
    """Several questions at once: the part their prompts share once, the rest of each prompt in
    one batch with a batch KV cache, then every option of every question continuing from its
    own question's row. None for
    models whose cache is not plain keys and values (sliding windows, state-space layers)."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    if not all(type(c) is KVCache for c in make_prompt_cache(model)):
        return None
    body = model.model if head is not None else model
    shared = _shared_prefix(prompts)
    if shared:
        single = make_prompt_cache(model)
        mx.eval(body(mx.array([prompts[0][:shared]]), cache=single))
        # the one row of the shared part, a row per question
        cache = [BatchKVCache.merge([c] * len(prompts)) for c in single]
    else:
        cache = [BatchKVCache([0] * len(prompts)) for _ in range(len(model.layers))]
    # The rest of each prompt, padded on the right; the padding then moves to the left, where
    # the cache masks it (mlx-lm's BatchKVCache.prepare/finalize, as its batch generation does).
    tails = [p[shared:] for p in prompts]
    width = max(len(t) for t in tails)
    x = np.zeros((len(prompts), width), dtype=np.int32)
    for r, toks in enumerate(tails):
        x[r, :len(toks)] = toks
    for c in cache:
        c.prepare(right_padding=[width - len(t) for t in tails])
    h = body(mx.array(x), cache=cache)
    h = mx.take_along_axis(h, mx.array([[len(t) - 1] for t in tails])[..., None], axis=1)
    # The prompt's last position predicts each option's first token.
    first = np.array(_logprobs(head(h) if head is not None else h)[:, -1])
    for c in cache:
        c.finalize()
    rows = [(q, c) for q, cs in enumerate(conts) for c in cs]
    rest = _option_pass(model, head, cache, rows)
    out, r = [], 0
    for q, cs in enumerate(conts):
        out.append([(float(first[q, c[0]]) + rest[r + o]) / len(c) for o, c in enumerate(cs)])
        r += len(cs)
    return out


def option_logprobs(model, tokenizer, questions: list[MCQ], system: str | None = None,
                    on_question: Callable[[int], None] | None = None, batch: int = 16) -> list[list[float]]:
    """Per question, the mean log-probability per token of each option. A question goes
    through the model once and its options continue from its keys and values, ``batch``
    questions per forward pass."""
    out = []
    head = _head(model)
    for at in range(0, len(questions), batch):
        chunk = questions[at:at + batch]
        prompts = [prompt_tokens(tokenizer, q.question, system) for q in chunk]
        conts = [[tokenizer.encode(o, add_special_tokens=False) or [tokenizer.eos_token_id] for o in q.options]
                 for q in chunk]
        scores = _batched(model, head, prompts, conts)
        out += scores if scores is not None else one_by_one(model, head, prompts, conts)
        if on_question:
            on_question(len(chunk))
    return out


def choose(scores: list[float]) -> int:
    """The 1-based option with the highest score (the first on a tie)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i)) + 1


def score(model, tokenizer, questions: list[MCQ], system: str | None = None, **kw) -> list[dict]:
    """One row per question: the chosen option, whether it is right, and each option's score."""
    lps = option_logprobs(model, tokenizer, questions, system, **kw)
    return [{"id": q.id, "category": q.category, "answer": q.answer, "choice": choose(s),
             "correct": choose(s) == q.answer, "scores": [round(v, 4) for v in s]}
            for q, s in zip(questions, lps)]
