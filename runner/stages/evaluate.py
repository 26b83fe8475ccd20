"""evaluate: the base and the tuned model on exactly the same items.

Primary: the knowledge probes (``dataset/probes.jsonl``, test wording) of the trained facts
(``your_documents``) and of the facts kept out of training (``unseen_facts``), and the questions
of ``evaluate.mcq_path`` (``general``), each multiple choice scored by log-likelihood and compared
pairwise: n, both accuracies, the difference with a 95 % bootstrap interval and McNemar's exact
p, per set and per kind or category. From them a verdict (report headline, MLflow description
and tag) and ``eval/knowledge_score``, what sweeps maximise. Secondary: validation and test
loss with perplexity, a few generated answers, and generated multiple choice on a small sample
(strict and lenient parsing). ``eval.json`` holds it all. Adapters made under another
lora/model config or another dataset are refused. On a CPU the two models are measured at once,
each in a process of its own (``evaluate.workers``, ``components/training/measure.py``); the
base model's measurements are kept in the cache for the next run that asks the same
(``evaluate.reuse_base``: a sweep's jobs measure the base model once).
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from omegaconf import OmegaConf

from components import stats
from components.files import read_jsonl, write_json
from components.mcq import MCQ, MCQError, load_teleqna, score_generated
from components.progress import Progress
from runner.fingerprint import code_hash
from runner.stage import Interrupted, StageContext, StageError

log = logging.getLogger(__name__)

INPUTS = ["dataset", "adapters"]
OUTPUTS = ["eval.json"]
CONFIG = ["model", "lora", "evaluate", "cache_dir", "dataset.system_prompt", "hw.cpu_threads"]
# The processes measuring the two models and their threads, and whether the base model's
# measurements come from the cache: how fast, never what they find.
NOT_FINGERPRINTED = ["evaluate.workers", "evaluate.reuse_base", "hw.cpu_threads"]


def _by(rows_b: list[dict], rows_t: list[dict], key: str, resamples: int, seed: int) -> dict[str, dict]:
    groups: dict[str, tuple[list, list]] = {}
    for b, t in zip(rows_b, rows_t):
        g = groups.setdefault(b[key], ([], []))
        g[0].append(b["correct"])
        g[1].append(t["correct"])
    return {k: stats.paired(b, t, resamples, seed) for k, (b, t) in sorted(groups.items())}


def _question_sets(cfg, data: Path) -> dict[str, list[MCQ]]:
    """The test probes of the trained and the unseen facts, and ``evaluate.mcq_path``'s questions."""
    from components.training import evaluation as ev

    probes = [p for p in read_jsonl(data / "probes.jsonl") if p["split"] == "test"] \
        if (data / "probes.jsonl").is_file() else []
    sets = {name: [MCQ.from_probe(p) for p in probes if p["set"] == s] for name, s in ev.SETS.items()}
    if cfg.max_probes:
        sets = {k: random.Random(cfg.seed).sample(v, min(len(v), cfg.max_probes)) for k, v in sets.items()}
    if cfg.mcq_path:
        try:
            sets["general"] = load_teleqna(cfg.mcq_path)[: cfg.mcq_max_questions]
        except MCQError as exc:
            raise StageError(f"evaluate.mcq_path: {exc}") from None
    sets = {k: v for k, v in sets.items() if v}
    if not sets.get("your_documents"):
        log.warning("evaluate: no probes of trained facts in %s: nothing shows what the fine-tune "
                    "taught (the corpus gave no glossary, definitions or clause titles)", data / "probes.jsonl")
    return sets


def _measure(ctx: StageContext, cfg, specs: list[dict], per_model: int) -> tuple[dict, dict, bool]:
    """The base and the tuned model's answers (``specs``, in that order), the base's from the
    cache when an earlier run measured the same; and whether it came from there."""
    from components.training import measure

    # The base model answers the same whatever was trained: a sweep's jobs measure it once.
    kept = None
    if cfg.reuse_base:
        # The code that measures, as the stage fingerprint reads it (every module it reaches).
        code = code_hash("components.training.measure", OmegaConf.create({}))
        kept = measure.stored(specs[0], Path(ctx.cfg.cache_dir), code)
    base = json.loads(kept.read_text()) if kept is not None and kept.is_file() else None
    if base is not None:
        log.info("evaluate: the base model's measurements reused from %s", kept)
        specs = specs[1:]
    with Progress("evaluate", len(specs) * per_model, unit="answers") as progress:
        try:
            if cfg.workers > 1 and len(specs) > 1:
                log.info("evaluate: the base and the tuned model measured at once, in two processes")
                found = measure.measure_both(specs, progress.advance, ctx.cancel,
                                             threads=max(1, (ctx.cfg.hw.cpu_threads or 2) // cfg.workers))
            else:
                found = [measure.measure(s, progress.advance, ctx.cancel) for s in specs]
        except measure.Stopped:
            raise Interrupted("evaluate: stopped on request; a rerun evaluates again") from None
        except measure.MeasureError as exc:
            raise StageError(f"evaluate: {exc}") from None
    reused = base is not None
    if base is None:
        base = found.pop(0)
        if kept is not None:
            write_json(kept, base)
    return base, found[0], reused


def _r4(x) -> float:
    return round(float(x), 4)


def _compare(sets: dict[str, list[MCQ]], base: dict, tuned: dict, cfg) -> tuple[dict, dict, dict, str]:
    """Base against tuned on each set, paired, and per category: the metrics, the comparisons,
    the per-group ones and the verdict."""
    m: dict[str, float] = {}
    compared, per_group = {}, {}
    for name in sets:
        b, t = base["sets"][name], tuned["sets"][name]
        c = stats.paired([r["correct"] for r in b], [r["correct"] for r in t], cfg.bootstrap_resamples, cfg.seed)
        compared[name] = c
        per_group[name] = _by(b, t, "category", cfg.bootstrap_resamples, cfg.seed)
        m.update({f"eval/{name}_n": c["n"], f"eval/{name}_base": c["base"], f"eval/{name}_tuned": c["tuned"],
                  f"eval/{name}_{'gain' if name == 'your_documents' else 'change'}": c["diff"],
                  f"eval/{name}_ci_low": c["ci_low"], f"eval/{name}_ci_high": c["ci_high"],
                  f"eval/{name}_p": c["p"]})
        for group, g in per_group[name].items():
            slug = "".join(ch if ch.isalnum() else "_" for ch in group.lower()).strip("_")
            m[f"eval/{name}/{slug}_base"], m[f"eval/{name}/{slug}_tuned"] = g["base"], g["tuned"]
    verdict = stats.verdict(compared)
    if "your_documents" in compared and "unseen_facts" in compared:
        pick = {k: ([r["correct"] for r in base["sets"][k]], [r["correct"] for r in tuned["sets"][k]])
                for k in ("your_documents", "unseen_facts")}
        over = stats.gain_over_control(pick["your_documents"], pick["unseen_facts"], cfg.bootstrap_resamples, cfg.seed)
        compared["your_documents"]["over_unseen"] = over
        m.update({"eval/gain_over_unseen": over["diff"], "eval/gain_over_unseen_ci_low": over["ci_low"],
                  "eval/gain_over_unseen_ci_high": over["ci_high"]})
    m["eval/knowledge_score"] = stats.knowledge_score(compared)
    return m, compared, per_group, verdict


def run(ctx: StageContext) -> dict[str, float]:
    from components.training import evaluation as ev
    from components.training import lora, measure

    cfg, lcfg = ctx.component("evaluate"), ctx.component("lora")
    adapters, data = ctx.path("adapters"), ctx.path("dataset")
    # The adapters say what made them; finetune records the same provenance.
    prov = lora.provenance(OmegaConf.to_container(ctx.cfg.lora), OmegaConf.to_container(ctx.cfg.model), data)
    why = lora.provenance_mismatch(adapters, prov)
    if why:
        raise StageError(f"evaluate: {adapters} was not made by this config ({why}); re-run "
                         "fine-tuning with it: stages=[finetune,evaluate]")
    mdir = ctx.component("model").local_dir(ctx.cfg.cache_dir)
    system = ctx.cfg.dataset.system_prompt

    sets = _question_sets(cfg, data)
    samples = read_jsonl(data / "test.jsonl")[: cfg.samples]
    generative = sets.get("your_documents", [])[: cfg.generative_mcq]
    spec = {"model_dir": str(mdir), "dtype": lcfg.dtype, "seed": cfg.seed, "system": system,
            "sets": {k: measure.spec_questions(v) for k, v in sets.items()},
            "test_path": str(data / "test.jsonl"), "mask_prompt": lcfg.mask_prompt,
            "batch_size": lcfg.batch_size, "max_seq_length": lcfg.max_seq_length,
            "samples": [r["messages"][:-1] for r in samples], "max_tokens": cfg.max_tokens,
            "generative": measure.spec_questions(generative), "mcq_max_tokens": cfg.mcq_max_tokens}
    specs = [{**spec, "name": "the base model", "adapters": None},
             {**spec, "name": "the tuned model", "adapters": str(adapters)}]
    t0 = time.perf_counter()
    per_model = sum(len(qs) for qs in sets.values()) + len(samples) + len(generative)
    base, tuned, reused = _measure(ctx, cfg, specs, per_model)
    for res in (base, tuned):
        res["generative"] = score_generated(generative, res["generative"])
    seconds = time.perf_counter() - t0

    m, compared, per_group, verdict = _compare(sets, base, tuned, cfg)
    for k in ("test_loss", "test_ppl"):
        if k in base:
            m[f"eval/{k}_base"], m[f"eval/{k}_tuned"] = _r4(base[k]), _r4(tuned[k])
            m[f"eval/{k}_delta"] = _r4(tuned[k] - base[k])
    gb, gt = base["generative"], tuned["generative"]
    if gb["n"]:
        for k in ("accuracy", "strict_accuracy", "strict_parse_failure_rate"):
            m[f"eval/generative_mcq_{k}_base"], m[f"eval/generative_mcq_{k}_tuned"] = gb[k], gt[k]
        m["eval/generative_mcq_n"] = gb["n"]
    m["eval/seconds"] = round(seconds, 2)
    m["eval/base_reused"] = float(reused)
    training = lora.adapter_record(adapters).get("training", {})
    if training.get("val_loss_base") is not None and training.get("val_loss_kept") is not None:
        # The validation loss the finetune stage measured on the base and the kept weights (the
        # names earlier runs and sweeps use).
        b, t = training["val_loss_base"], training["val_loss_kept"]
        m.update({"eval/val_loss_before": _r4(b), "eval/val_loss_after": _r4(t), "eval/val_loss_delta": _r4(t - b),
                  "eval/val_ppl_after": _r4(lora.perplexity(t))})
    ctx.tracker.set_tags({"eval.verdict": verdict[:5000]})
    log.info("evaluate: %s", verdict)

    qs = {name: {q.id: q for q in v} for name, v in sets.items()}
    write_json(ctx.path("eval.json"), {
        "metrics": m,
        "verdict": verdict,
        "sets": {name: {"comparison": compared[name], "per_group": per_group[name],
                        "rows": [{"id": rb["id"], "category": rb["category"], "question": qs[name][rb["id"]].question,
                                  "options": list(qs[name][rb["id"]].options), "answer": rb["answer"],
                                  "base_choice": rb["choice"], "tuned_choice": rt["choice"],
                                  "base_scores": rb["scores"], "tuned_scores": rt["scores"]}
                                 for rb, rt in zip(base["sets"][name], tuned["sets"][name])]}
                 for name in sets},
        "losses": {**{k: {"base": base[k], "tuned": tuned[k]} for k in ("test_loss", "test_ppl") if k in base},
                   **({"valid_loss": {"base": m["eval/val_loss_before"], "tuned": m["eval/val_loss_after"]}}
                      if "eval/val_loss_before" in m else {})},
        "generative_mcq": {"base": gb, "tuned": gt},
        "samples": [{"question": r["messages"][-2]["content"], "gold": r["messages"][-1]["content"],
                     "kind": (r.get("meta") or {}).get("kind"), "base": b, "tuned": t,
                     "f1_base": round(ev.token_f1(b, r["messages"][-1]["content"]), 4),
                     "f1_tuned": round(ev.token_f1(t, r["messages"][-1]["content"]), 4)}
                    for r, b, t in zip(samples, base["samples"], tuned["samples"])],
        "adapters": training,
    })
    ctx.tracker.log_artifact(ctx.path("eval.json"))
    return m
