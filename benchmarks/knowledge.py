"""Does the default recipe teach the model the user's documents, without forgetting?

Runs the whole pipeline (``python -m runner``, the default config) on two corpora, each in its
own process, and reads what its evaluate stage measured: base and tuned on exactly the same
never-trained probes, paired.

- ``sample``: the built-in sample corpus, the default run exactly as a new user starts it;
- ``etsi``: our ETSI-layout fixtures (tests/fixtures/etsi_layout.py: ETSI PDFs, 3GPP Word files,
  Markdown and HTML of five specifications, and ``--generated`` fictional ones in the same
  layouts, 37 by default: about ten times the sample's facts, the ratio printed), with
  ``extraction.extractor=rules`` (an LLM extraction of it takes a quarter of an hour on two
  cores; the facts the recipe teaches come from the rules' glossary and clause titles anyway).

Both are given a general-telecom multiple-choice file (TeleQnA format, 100 questions on 50
acronyms neither corpus contains, written here) as ``evaluate.mcq_path``: the third probe set.

The baseline is the base model, side by side on the same items: gains are tuned minus base
(fractions: 0.25 = 25 points) with a 95 % bootstrap interval and McNemar's exact p. Last line:
one JSON object whose top-level keys hold the worse of the two corpora, with each corpus's
figures nested under its name.
Usage: python benchmarks/knowledge.py [--corpora sample,etsi] [--generated 37] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# General telecom acronyms that neither corpus defines (checked at run time): forgetting is
# measured on knowledge the base model brings, not on the documents.
GENERAL = [
    ("LTE", "Long Term Evolution"), ("GSM", "Global System for Mobile Communications"),
    ("UMTS", "Universal Mobile Telecommunications System"), ("IMS", "IP Multimedia Subsystem"),
    ("VoLTE", "Voice over LTE"), ("MIMO", "Multiple Input Multiple Output"),
    ("OFDM", "Orthogonal Frequency Division Multiplexing"), ("QAM", "Quadrature Amplitude Modulation"),
    ("SIM", "Subscriber Identity Module"), ("IMSI", "International Mobile Subscriber Identity"),
    ("IMEI", "International Mobile Equipment Identity"), ("MSISDN", "Mobile Station International Subscriber Directory Number"),
    ("HSS", "Home Subscriber Server"), ("MME", "Mobility Management Entity"),
    ("SGW", "Serving Gateway"), ("PGW", "Packet Data Network Gateway"),
    ("EPC", "Evolved Packet Core"), ("eNB", "Evolved Node B"),
    ("SMS", "Short Message Service"), ("VoIP", "Voice over Internet Protocol"),
    ("SIP", "Session Initiation Protocol"), ("RTP", "Real-time Transport Protocol"),
    ("SCTP", "Stream Control Transmission Protocol"), ("GTP", "GPRS Tunnelling Protocol"),
    ("GPRS", "General Packet Radio Service"), ("EDGE", "Enhanced Data rates for GSM Evolution"),
    ("WCDMA", "Wideband Code Division Multiple Access"), ("HSPA", "High Speed Packet Access"),
    ("MBMS", "Multimedia Broadcast Multicast Service"), ("NB-IoT", "Narrowband Internet of Things"),
    ("LTE-M", "LTE for Machine-type communication"), ("V2X", "Vehicle to Everything"),
    ("URLLC", "Ultra-Reliable Low-Latency Communication"), ("eMBB", "Enhanced Mobile Broadband"),
    ("mMTC", "Massive Machine-Type Communications"), ("MEC", "Multi-access Edge Computing"),
    ("NFV", "Network Functions Virtualisation"), ("SDN", "Software Defined Networking"),
    ("VNF", "Virtualised Network Function"), ("CNF", "Cloud-native Network Function"),
    ("RAN", "Radio Access Network"), ("O-RAN", "Open Radio Access Network"),
    ("RIC", "RAN Intelligent Controller"), ("CPRI", "Common Public Radio Interface"),
    ("ANR", "Automatic Neighbour Relation"), ("TTI", "Transmission Time Interval"),
    ("DSS", "Dynamic Spectrum Sharing"), ("CoMP", "Coordinated Multi-Point"),
    ("ICIC", "Inter-Cell Interference Coordination"), ("eSIM", "Embedded Subscriber Identity Module"),
    ("MVNO", "Mobile Virtual Network Operator"), ("APN", "Access Point Name"),
    ("PCRF", "Policy and Charging Rules Function"), ("OCS", "Online Charging System"),
    ("CDR", "Charging Data Record"), ("NAS", "Non-Access Stratum"),
]


def general_mcq(path: Path, exclude: set[str], n: int = 100, seed: int = 0) -> int:
    """Write a TeleQnA-format file of up to ``n`` questions, both directions per acronym."""
    rng = random.Random(seed)
    terms = [(a, e) for a, e in GENERAL if a.lower() not in exclude]
    out, i = {}, 0
    for a, e in terms:
        for direction in ("expansion", "acronym"):
            others = [t for t in terms if t[0] != a]
            wrong = rng.sample(others, 3)
            if direction == "expansion":
                q, right, opts = f"What is the expansion of {a} in mobile networks?", e, [w[1] for w in wrong]
            else:
                q, right, opts = f"Which abbreviation is used for {e}?", a, [w[0] for w in wrong]
            opts = opts + [right]
            rng.shuffle(opts)
            k = opts.index(right) + 1
            out[f"question {i}"] = {"question": q, **{f"option {j}": o for j, o in enumerate(opts, 1)},
                                    "answer": f"option {k}: {right}", "explanation": "",
                                    "category": f"general: {direction}"}
            i += 1
    out = dict(list(out.items())[:n])
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return len(out)


def sample_acronyms() -> set[str]:
    import re

    from components.documents import sample_corpus as S

    rows = S.NR_ABBREVIATIONS + S.CORE_ABBREVIATIONS
    return {a.lower() for a, _ in rows} | {m.lower() for m in re.findall(r"^\| (\S+) \|", S.OPERATOR_NOTES, re.M)}


def etsi_acronyms(truth_dir: Path) -> set[str]:
    out = set()
    for t in truth_dir.glob("*.truth.json"):
        truth = json.loads(t.read_text())
        out |= {a.lower() for a, _ in truth["abbreviations"] + truth["inline"]}
    return out


def run_pipeline(run_dir: Path, cache: Path, overrides: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "NO_PROXY": "*"}
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "runner", f"hydra.run.dir={run_dir}", f"cache_dir={cache}",
                             "tracking.system_metrics=false", *overrides],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"pipeline failed ({rc}); see {run_dir.parent / (run_dir.name + '.log')}")
    return time.perf_counter() - t0


def figures(run_dir: Path, wall: float) -> dict:
    ev = json.loads((run_dir / "eval.json").read_text())
    stages = json.loads((run_dir / ".state" / "last_run.json").read_text())
    seconds = {s: round(v["seconds"], 1) for s, v in stages.items()}
    m = json.loads((run_dir / "metrics.json").read_text())
    out = {"wall_s": round(wall, 1), "stage_s": seconds,
           "gain_over_unseen": m.get("eval/gain_over_unseen"), "documents": m.get("convert/docs"),
           "chunks": m.get("process/chunks"), "facts": m.get("dataset/facts"),
           "train_rows": m.get("dataset/train"),
           "evaluate_share": round(seconds.get("evaluate", 0) / max(1e-9, sum(seconds.values())), 3),
           "train_s": ev["adapters"].get("seconds"), "iters": ev["adapters"].get("iters"),
           "kept_step": ev["adapters"].get("kept_step"), "verdict": ev["verdict"]}
    for name, s in ev["sets"].items():
        c = s["comparison"]
        out[name] = {k: c[k] for k in ("n", "base", "tuned", "diff", "ci_low", "ci_high", "p")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default="sample,etsi")
    ap.add_argument("--generated", type=int, default=37,
                    help="fictional specifications added to the etsi corpus (about 27 facts each)")
    ap.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: take a corpus's figures from an earlier run kept there")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="knowledge-"))
    work.mkdir(parents=True, exist_ok=True)
    # A cache of its own, holding only the converted base model: every stage really runs.
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    models = ROOT / "outputs" / "cache" / "models"
    if models.is_dir():
        shutil.copytree(models, cache / "models")
    results = {}
    for name in args.corpora.split(","):
        run_dir = work / name
        kept = work / f"{name}.result.json"
        if args.reuse and kept.is_file():
            results[name] = json.loads(kept.read_text())
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        mcq = work / f"general-{name}.json"
        if name == "sample":
            base, known = [], sample_acronyms()
        elif name == "etsi":
            from tests.fixtures.etsi_layout import write_corpus

            corpus = work / "etsi-corpus"
            shutil.rmtree(corpus, ignore_errors=True)
            shutil.rmtree(work / "etsi-truth", ignore_errors=True)
            write_corpus(corpus, truth_dir=work / "etsi-truth", generated=args.generated)
            base, known = [f"corpus.path={corpus}", "extraction.extractor=rules"], etsi_acronyms(work / "etsi-truth")
        else:
            sys.exit(f"unknown corpus {name!r}: sample or etsi")
        # The general set holds nothing the corpus defines.
        n = general_mcq(mcq, known)
        wall = run_pipeline(run_dir, cache, [*base, "stage_cache=false", f"evaluate.mcq_path={mcq}"])
        results[name] = {**figures(run_dir, wall), "general_questions": n}
        kept.write_text(json.dumps(results[name]))
        r = results[name]
        print(f"{name:7} {r['wall_s']:>7.1f}s  " + "  ".join(
            f"{k}: {r[k]['base']:.2f}->{r[k]['tuned']:.2f} ({r[k]['diff']:+.2f}, p={r[k]['p']:.2g}, n={r[k]['n']})"
            for k in ("your_documents", "unseen_facts", "general") if k in r), flush=True)
        print(f"        stages {r['stage_s']}  evaluate share {r['evaluate_share']:.2f}", flush=True)

    def worst(key, field, best=max):
        vals = [results[c][key][field] for c in results if key in results[c]]
        return best(vals) if vals else None

    summary = {"benchmark": "knowledge",
               "your_documents_gain": worst("your_documents", "diff", min),
               "your_documents_p": worst("your_documents", "p", max),
               "unseen_facts_change": worst("unseen_facts", "diff", min),
               "general_change": worst("general", "diff", min),
               "evaluate_share": max(results[c]["evaluate_share"] for c in results),
               "default_run_s": results.get("sample", {}).get("wall_s"),
               "facts_ratio_etsi_vs_sample": round(results["etsi"]["facts"] / results["sample"]["facts"], 2)
               if {"etsi", "sample"} <= set(results) and results["sample"]["facts"] else None,
               **results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
