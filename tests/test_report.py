"""report.md and report.html from what a run directory holds: every part drawn when its file is
there, left out when not; pictures are real PNGs embedded in one offline file; no secret leaks."""
from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image

from components import secrets
from components.files import write_json, write_jsonl
from runner.pipeline import ORDER
from runner.report import Facts, collect, extraction_quality, headline
from runner.report_html import write_report
from tests.fixtures.records import extraction_record

SECRET = "sk-report-7a6b5c4d3e"


def _example(q: str, a: str, kind: str, doc: str, chunk: str = "") -> dict:
    return {"messages": [{"role": "system", "content": "You are a telecom assistant."},
                         {"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "meta": {"doc_id": doc, "kind": kind, "chunk_id": chunk}}


def _record(chunk_id: str, doc_id: str, status: str = "ok", *, llm: dict | None = None,
            skip: str | None = None, error: str | None = None) -> dict:
    return extraction_record(chunk_id, doc_id, status=status, llm=llm, skip=skip,
                             **({"error": error} if error else {}))


@pytest.fixture
def full_run(tmp_path):
    """A run directory with every file the report reads (own invented 3GPP-style content)."""
    d = tmp_path / "run"
    write_json(d / "metrics.json", {"process/chunks": 5, "extract/chunks": 4, "extract/json_valid_rate": 0.5,
                                    "extract/qa_grounded_rate": 1.0, "eval/val_loss_before": 2.5,
                                    "eval/val_loss_after": 2.0, "finetune/train_loss_final": 1.9,
                                    "alert/extract_invalid_rate": 0.5})
    write_json(d / ".state" / "last_run.json", {"convert": {"status": "ran", "seconds": 12.5},
                                                "extract": {"status": "cached", "seconds": 0.2},
                                                "evaluate": {"status": "failed", "seconds": 3.0}})
    write_json(d / "documents" / "manifest.json", [
        {"source": "ts-99901.md", "status": "success"},
        {"source": "broken.pdf", "status": "failed", "error": f"not a PDF (key {SECRET})"}])
    # Records in the schema components.llm.extractor writes (components/llm/record; test_e2e
    # checks the report of a real run's records).
    acr = {"acronym": "XNB", "expansion": "Example Node B"}
    qa = {"question": "What is XNB?", "answer": "Example Node B", "evidence": "XNB: Example Node B"}
    llm = {"json_valid": True, "qa_proposed": 1, "qa_grounded": 1,
           "proposed": {"acronyms": [acr], "spec_refs": ["TS 99.901", "TS 99.902"], "entities": [], "qa": [qa]},
           "acronyms": [acr], "spec_refs": [], "entities": [], "qa": [qa]}
    write_jsonl(d / "extractions.jsonl", [
        _record("a-1", "doc-a", llm=llm), _record("a-2", "doc-a", llm=llm),
        _record("b-1", "doc-b", "invalid", llm={**llm, "json_valid": False}, error="not JSON"),
        _record("b-2", "doc-b", "error", llm={"json_valid": False}, error="ReadTimeout"),
        _record("c-1", "doc-c", skip="glossary")])
    write_jsonl(d / "dataset" / "train.jsonl", [_example("What is XNB?", "Example Node B", "qa", "doc-a", "a-1"),
                                                _example("XNB?", "XNB stands for Example Node B.", "acronym", "doc-a")])
    write_jsonl(d / "dataset" / "valid.jsonl", [_example("v?", "v", "acronym", "doc-c")])
    write_jsonl(d / "dataset" / "test.jsonl", [_example("t?", "t", "qa", "doc-d")])
    comparison = {"n": 40, "base": 0.25, "tuned": 0.75, "diff": 0.5, "ci_low": 0.35, "ci_high": 0.65,
                  "gained": 20, "lost": 0, "p": 1.9e-6}
    write_json(d / "eval.json", {
        "metrics": {}, "verdict": "knows your documents better: +50 points (95 % CI +35…+65, p < 0.001, n = 40)",
        "sets": {"your_documents": {"comparison": comparison, "per_group": {
                     "acronym": {"n": 30, "base": 0.3, "tuned": 0.8}, "spec_clause": {"n": 10, "base": 0.1, "tuned": 0.6}}},
                 "unseen_facts": {"comparison": {**comparison, "n": 12, "base": 0.5, "tuned": 0.5, "diff": 0.0,
                                                 "ci_low": -0.1, "ci_high": 0.1, "p": 1.0}, "per_group": {}}},
        "losses": {"valid_loss": {"base": 2.5, "tuned": 2.0}, "test_loss": {"base": 2.7, "tuned": 2.2}},
        "samples": [{"question": "What is XNB?", "gold": "Example Node B", "base": "no idea",
                     "tuned": "Example Node B"}]})
    write_jsonl(d / "alerts.jsonl", [{"alert": "extraction invalid rate above 0.3", "value": 0.5}])
    series = {"train": [(5, 3.0), (10, 2.4), (15, 2.1)], "validation": [(5, 3.1), (15, 2.3)]}
    return d, series


def _pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)]


def test_every_part_is_drawn_embedded_and_kept_for_mlflow(full_run):
    run_dir, series = full_run
    secrets.register({SECRET})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    write_report(run_dir, metrics, {"status": "FAILED in stage evaluate", "reason": "boom"}, series)
    html = (run_dir / "report.html").read_text()
    for section in ("Loss curves", "Extraction quality", "Dataset mixture", "Base vs tuned",
                    "your documents: accuracy per category", "Stage timings", "Documents", "Alerts", "Metrics",
                    "Held-out samples"):
        assert f">{section}<" in html, section
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == ["base_vs_tuned.png", "dataset_mixture.png", "extraction_quality.png",
                     "loss_curves.png", "stage_timings.png", "your_documents_per_category.png"]
    images = _pngs(html)
    assert len(images) == len(plots) and all(i.format == "PNG" and i.size[0] >= 500 for i in images)
    # Self-contained: nothing fetched when opened offline.
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", html)
    assert "broken.pdf" in html and "ReadTimeout" in html and "FAILED in stage evaluate" in html
    assert SECRET not in html and SECRET not in (run_dir / "report.md").read_text()
    assert "## Alerts" in (run_dir / "report.md").read_text()


def test_a_run_that_made_nothing_yet_gets_a_report_without_pictures(tmp_path):
    write_report(tmp_path, {}, {"status": "RUNNING"})
    html = (tmp_path / "report.html").read_text()
    assert "RUNNING" in html and "<img" not in html
    assert "Loss curves" not in html and "Dataset mixture" not in html
    assert list((tmp_path / "plots").iterdir()) == []


def test_stages_are_listed_in_pipeline_order(full_run):
    run_dir, _ = full_run
    write_report(run_dir, {}, {"status": "FINISHED"})
    rows = [line.split("|")[1].strip() for line in (run_dir / "report.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ORDER]
    assert rows == ["convert", "extract", "evaluate"]


def test_extraction_quality_per_source(full_run):
    run_dir, _ = full_run
    f = collect(run_dir, {}, {})
    q = extraction_quality(f.extractions, f.kept_qa)
    # a-1 and a-2 answered; 2 of the 4 items each proposed are grounded; a-1's Q&A is trained on.
    assert q["doc-a"] == {"chunks": 2, "valid": 1.0, "grounded": 0.5, "kept": 0.5}
    assert q["doc-b"] == {"chunks": 2, "valid": 0.0, "grounded": 0.0, "kept": 0.0}
    assert "doc-c" not in q  # rules only: no model was asked
    assert q["all"] == {"chunks": 4, "valid": 0.5, "grounded": 0.5, "kept": 0.5}


def test_headline_says_what_matters(full_run):
    run_dir, _ = full_run
    f: Facts = collect(run_dir, json.loads((run_dir / "metrics.json").read_text()), {"status": "FINISHED"})
    text = "\n".join(headline(f))
    assert "**FINISHED**" in text
    assert "documents: 1 converted, 1 failed" in text
    assert "validation loss: 2.5 → 2 (-0.5)" in text
    assert "dataset: 2 train / 1 valid / 1 test" in text
    assert "alerts: 2" in text  # one from alerts.jsonl, one alert/ metric
    assert text.splitlines()[1] == ("- **verdict**: knows your documents better: +50 points "
                                    "(95 % CI +35…+65, p < 0.001, n = 40)")
    assert "your documents: base 0.25 → tuned 0.75, +50 points (95 % CI +35…+65, p < 0.001, n = 40)" in text
    assert "unseen facts: base 0.50 → tuned 0.50, +0 points" in text


def test_an_earlier_eval_format_and_a_cut_line_still_report(tmp_path):
    write_json(tmp_path / "eval.json", {"predictions": [{"question": "q", "gold": "g", "prediction": "p"}]})
    (tmp_path / "extractions.jsonl").write_text(
        json.dumps(_record("x", "d", llm={"json_valid": True})) + '\n{"chunk_')
    write_report(tmp_path, {"eval/val_loss_before": 2.0, "eval/val_loss_after": 1.5}, {})
    md = (tmp_path / "report.md").read_text()
    assert "| q | g | p |" in md
    html = (tmp_path / "report.html").read_text()
    assert ">Base vs tuned<" in html and ">Extraction quality<" in html
