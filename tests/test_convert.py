"""The convert stage on our 3GPP-style sample corpus, through real Docling."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from components.documents import convert as convert_mod
from components.documents.convert import engine as engine_mod
from components.documents.convert.engine import DoclingEngine
from components.documents.convert import DoclingConverter, layout_models_available
from components.documents.sample_corpus import VENDOR_GUIDE, pdf_bytes, write_sample_corpus
from components.tracking import NullTracker
from runner import pipeline
from runner.stage import StageError
from runner.stages import convert as stage


def make_cfg(cache: Path, corpus: Path, **docling):
    cfg = OmegaConf.create({"cache_dir": str(cache), "hw": {"convert_workers": 2},
                            "corpus": OmegaConf.load(REPO / "conf/corpus/sample.yaml"),
                            "docling": OmegaConf.load(REPO / "conf/docling/default.yaml"),
                            "executor": OmegaConf.load(REPO / "conf/executor/local.yaml")})
    cfg.corpus.path = str(corpus)
    for k, v in docling.items():
        cfg.docling[k] = v
    return cfg


def run_stage(run_dir: Path, cfg) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    return stage.run(pipeline.context("convert", run_dir, cfg, NullTracker()))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "sample")


@pytest.fixture(scope="module")
def first(tmp_path_factory, corpus):
    """One cold run (1 worker, JSON and HTML exports), its metrics and its documents folder."""
    base = tmp_path_factory.mktemp("first")
    cfg = make_cfg(base / "cache", corpus, workers=1, exports=["json", "html"])
    metrics = run_stage(base / "run", cfg)
    return base, cfg, metrics, base / "run" / "documents"


def test_every_document_becomes_markdown_with_a_report(first):
    _, _, metrics, docs = first
    manifest = json.loads((docs / "manifest.json").read_text())
    assert [m["status"] for m in manifest] == ["success"] * 6
    assert [m["source"] for m in manifest] == sorted(m["source"] for m in manifest)
    assert sorted(p.stem for p in docs.glob("*.md")) == sorted(m["doc_id"] for m in manifest)
    assert metrics["convert/docs"] == 6 and metrics["convert/failed_docs"] == 0
    assert metrics["convert/cache_hits"] == 0
    spec = (docs / "38899-i00.md").read_text()
    assert "Small data transmission" in spec and "T319a" in spec  # Release 18 only


def test_3gpp_metadata_from_cover_and_title_from_heading(first):
    docs = first[3]
    meta = json.loads((docs / "meta" / "38899-h00.json").read_text())
    assert {k: meta[k] for k in ("spec", "version", "release", "title", "spec_type", "date")} == {
        "spec": "38.899", "version": "17.0.0", "release": 17, "spec_type": "TS", "date": "2026-03",
        "title": "NR; Example signalling procedures"}
    assert json.loads((docs / "meta" / "23599-h10.json").read_text())["version"] == "17.1.0"
    html = json.loads((docs / "meta" / "site-survey-procedure.json").read_text())
    assert html["title"] == "Site survey procedure" and "spec" not in html


def test_tables_exported_with_captions_as_markdown_and_csv(first):
    docs = first[3]
    meta = json.loads((docs / "meta" / "38899-i00.json").read_text())
    assert [t["caption"] for t in meta["tables"]] == ["Table 5.2-1: Timer values"]
    md = (docs / "tables" / "38899-i00" / "table-01.md").read_text()
    assert md.startswith("Table 5.2-1: Timer values\n") and "| T319a" in md
    rows = (docs / "tables" / "38899-i00" / "table-01.csv").read_text().splitlines()
    assert rows[0] == "Timer,Value (ms),Purpose" and len(rows) == 6  # header + 5 timers
    core = json.loads((docs / "meta" / "23599-h10.json").read_text())
    assert core["tables"][0]["caption"].startswith("Table 5-1:")
    assert first[2]["convert/tables"] == 5


def test_exports_on_request(first):
    docs = first[3]
    exported = json.loads((docs / "exports" / "38899-h00.json").read_text())
    assert exported["schema_name"] == "DoclingDocument"
    assert "<table>" in (docs / "exports" / "38899-h00.html").read_text()
    assert {p.name for p in docs.iterdir() if p.is_file() and p.suffix != ".md"} == {"manifest.json"}


def test_pdf_fallback_is_loud_and_counted(first, caplog):
    metrics, docs = first[2], first[3]
    ok, why = layout_models_available(None)
    if ok:
        pytest.skip("layout models are installed here; the standard-path test covers PDFs")
    assert metrics["convert/pdf_fallback_docs"] == 1
    assert json.loads((docs / "meta" / "vendor-gnb-configuration-guide.json").read_text())["pdf_fallback"]
    with caplog.at_level(logging.WARNING):
        conv = DoclingConverter(formats=["pdf"])
        assert conv.engine.pdf_native
    assert any("native text-only" in r.getMessage() and why in r.getMessage() for r in caplog.records)
    with pytest.raises(convert_mod.ConvertConfigError, match="pdf_backend=standard"):
        _ = DoclingConverter(pdf_backend="standard").engine.pdf_native


def test_standard_pdf_pipeline_when_layout_models_exist(tmp_path):
    ok, why = layout_models_available(None)
    if not ok:
        pytest.skip(f"standard PDF pipeline not testable here: {why}")
    pdf = tmp_path / "guide.pdf"
    pdf.write_bytes(pdf_bytes("Example gNB Configuration Guide", VENDOR_GUIDE))
    [res] = DoclingConverter(pdf_backend="standard").convert_all([("guide.pdf", pdf)])
    assert res.status == "success" and not res.pdf_fallback
    assert "ALM-3307" in res.markdown and res.tables  # the layout model finds the alarm table


def test_unchanged_documents_come_from_the_cache_without_docling(first, tmp_path, monkeypatch):
    base, cfg, _, docs = first

    def no_docling(self):
        raise AssertionError("Docling was built for a cached document")

    monkeypatch.setattr(DoclingEngine, "_build", no_docling)
    metrics = run_stage(tmp_path / "again", cfg)
    assert metrics["convert/cache_hits"] == metrics["convert/docs"] == 6
    assert tree(tmp_path / "again" / "documents") == tree(docs)
    # An option that changes the output is part of the key: a miss, so Docling is needed.
    with pytest.raises(AssertionError, match="Docling was built"):
        run_stage(tmp_path / "other", make_cfg(base / "cache", Path(cfg.corpus.path), workers=1))


def test_two_workers_give_the_same_bytes(first, tmp_path, corpus):
    docs = first[3]
    cfg = make_cfg(tmp_path / "cache", corpus, workers=2, exports=["json", "html"])
    metrics = run_stage(tmp_path / "run", cfg)
    assert metrics["convert/cache_hits"] == 0 and metrics["convert/workers"] == 2
    assert tree(tmp_path / "run" / "documents") == tree(docs)


def test_config_errors_are_stage_errors(tmp_path, corpus):
    with pytest.raises(ValueError, match="ocr_engine"):
        DoclingConverter(ocr_engine="paddle")
    with pytest.raises(ValueError, match="exports"):
        DoclingConverter(exports=["docx"])
    if not layout_models_available(None)[0]:
        with pytest.raises(StageError, match="pdf_backend=standard"):
            run_stage(tmp_path / "run", make_cfg(tmp_path / "cache", corpus, pdf_backend="standard"))


@pytest.mark.parametrize("engine,cls", [("rapidocr", "RapidOcrOptions"), ("tesseract", "TesseractCliOcrOptions"),
                                        ("easyocr", "EasyOcrOptions")])
def test_standard_pipeline_options_carry_the_users_choices(tmp_path, monkeypatch, engine, cls):
    # Wiring only (the models themselves are exercised by the standard-path test above).
    from docling.document_converter import PdfFormatOption

    monkeypatch.setattr(engine_mod, "layout_models_available", lambda path: (True, str(path)))
    conv = DoclingConverter(do_ocr=True, do_table_structure=False, ocr_engine=engine,
                            artifacts_path=str(tmp_path)).engine
    assert not conv.pdf_native
    opts = conv._pdf_option(PdfFormatOption).pipeline_options
    assert type(opts.ocr_options).__name__ == cls
    assert opts.do_ocr and not opts.do_table_structure and str(opts.artifacts_path) == str(tmp_path)
    native = DoclingConverter(artifacts_path=str(tmp_path), pdf_backend="native").engine
    assert native.pdf_native and native.options_hash() != conv.options_hash()


def test_tables_cut_from_the_export_equal_docling_per_table_rendering(tmp_path, corpus):
    from docling_core.transforms.serializer.markdown import MarkdownDocSerializer

    from components.documents.convert import table_markdowns
    from components.documents.corpus import collect

    conv = DoclingConverter(formats=["docx", "md"]).engine
    conv.prepare()
    sources, _ = collect(corpus, [".zip", ".docx", ".md"], tmp_path)
    checked = 0
    for s in sources:
        doc = conv._converter.convert(s.path).document
        md = doc.export_to_markdown()
        ser = MarkdownDocSerializer(doc=doc)
        assert table_markdowns(doc, md, doc.tables) == [ser.serialize(item=t).text for t in doc.tables]
        checked += len(doc.tables)
    assert checked == 5
