"""The layout's rules, checked: a stage declares all that decides its outputs and reads nothing
else; every config group builds a typed component; components never import the runner."""
from __future__ import annotations


import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from conftest import CONF, REPO
from runner import fingerprint as F
from runner import pipeline
from runner.config import ConfigError, build, view


def test_nothing_in_components_imports_runner():
    offenders = []
    for path in (REPO / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "runner"]
    assert offenders == []


def test_no_stage_imports_another_stage():
    """One stage, one module, one hand-off through the run directory."""
    for name in pipeline.ORDER:
        mods = F.code_modules([f"runner.stages.{name}"])
        assert {m for m in mods if m.startswith("runner.stages.")} == {f"runner.stages.{name}"}


def test_every_group_that_configures_a_component_has_a_target():
    # conf/hydra/ configures Hydra itself (logging, launchers), not a component of ours.
    missing = [str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF
               and p.relative_to(CONF).parts[0] != "hydra" and "_target_" not in OmegaConf.load(p)]
    assert missing == []


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the project's code, so a test can edit sources without touching the repo."""
    root = tmp_path_factory.mktemp("tree")
    for d in ("components", "runner"):
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def code_hashes(root: Path, cfg) -> dict[str, dict]:
    return {n: F.code_hash(f"runner.stages.{n}", view(cfg, pipeline.load_stage(n).CONFIG), root)
            for n in pipeline.ORDER}


@pytest.mark.parametrize("edited, expected", [
    ("components/llm/extraction.py", {"extract"}),
    ("components/llm/rules.py", {"extract", "dataset"}),  # dataset imports it lazily
    ("components/documents/convert/engine.py", {"convert"}),
    ("components/documents/convert/options.py", {"convert"}),
    ("components/documents/metadata.py", {"convert"}),
    ("components/training/lora.py", {"finetune", "evaluate"}),
    # dataset's near-duplicate check uses the processing package's MinHash (components.processing.dedup)
    ("components/processing/chunking.py", {"process", "dataset"}),
    ("components/llm/services.py", {"extract"}),
    ("components/files.py", set(pipeline.ORDER)),
])
def test_editing_a_component_reruns_exactly_the_stages_that_use_it(tree, compose, edited, expected):
    cfg = compose()
    before = code_hashes(tree, cfg)
    path = tree / edited
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original + "\n# an edit\n", encoding="utf-8")
        after = code_hashes(tree, cfg)
    finally:
        path.write_text(original, encoding="utf-8")
    assert {n for n in pipeline.ORDER if before[n] != after[n]} == expected


def test_the_code_walk_finds_lazy_imports_and_config_targets(compose):
    mods = F.code_modules(["runner.stages.extract"])
    assert "components.llm.extraction" in mods  # imported inside run()
    cfg = view(compose().copy(), pipeline.load_stage("extract").CONFIG)
    assert "components.llm.services" in F.code_hash("runner.stages.extract", cfg)  # a _target_


def config_fingerprints(cfg) -> dict[str, str]:
    return {n: json.dumps(F.config_identity(st, view(cfg, st.CONFIG)), sort_keys=True)
            for n in pipeline.ORDER for st in [pipeline.load_stage(n)]}


def test_a_key_reruns_exactly_the_stages_that_declare_it(compose, tmp_path):
    def c(*overrides):
        return compose(f"cache_dir={tmp_path}", *overrides)

    base = config_fingerprints(c())
    changed = config_fingerprints(c("lora.batch_size=2"))
    assert {n for n in pipeline.ORDER if base[n] != changed[n]} == {"dataset", "finetune", "evaluate"}
    unrelated = config_fingerprints(c("tracking.experiment=other", "optimized_metric=eval/token_f1"))
    assert unrelated == base
    hw = compose().hw
    # How many processes convert, or extract, changes how fast, never what they write.
    workers = config_fingerprints(c(f"hardware.convert_workers={3 - hw.convert_workers}", "docling.parallel=thread"))
    assert workers == base
    assert config_fingerprints(c("docling.max_file_mb=7")) != base


def test_a_stage_cannot_read_what_it_did_not_declare(compose):
    v = view(compose(), ["dataset", "lora.batch_size"])
    assert v.lora.batch_size >= 1
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        _ = v.lora.rank
    with pytest.raises((ConfigAttributeError, ConfigKeyError)):
        _ = v.service
    with pytest.raises(ConfigError, match="lora.nope: declared by a stage but not in the config"):
        view(compose(), ["lora.nope"])


@pytest.mark.parametrize("override, message", [
    ("lora.rank=abc", "lora.rank: Input should be a valid integer"),
    ("+lora.rnak=8", "lora.rnak: unknown key"),
    ("extraction.temperature=-1", "extraction.temperature: Input should be greater than or equal to 0"),
    ("+dataset.colour=blue", "dataset.colour: unknown key"),
    ("corpus.extensions=3", "corpus.extensions"),
])
def test_a_wrong_value_fails_naming_the_key(compose, override, message):
    from runner.app import GROUPS

    cfg = compose(override)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        for g in GROUPS:
            build(cfg[g], g)


def test_the_app_refuses_a_wrong_key_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "runner", "lora.rank=abc", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "lora.rank: Input should be a valid integer" in out.stderr + out.stdout
    assert not (tmp_path / "documents").exists() and not (tmp_path / ".state").exists()


def test_a_component_is_built_once_per_run_and_config(compose, tmp_path):
    """The app builds every group up front into the run's Resources; a stage asking for its
    group (through its own config view) gets that same object, not another build."""
    from components.tracking import NullTracker
    from runner.stage import Resources, StageContext

    cfg = compose()
    resources = Resources()
    built = resources.component("lora", cfg.lora)
    ctx = StageContext(run_dir=tmp_path, cfg=view(cfg, pipeline.load_stage("finetune").CONFIG),
                       tracker=NullTracker(), resources=resources)
    assert ctx.component("lora") is built
    other = compose("lora.rank=4")
    assert resources.component("lora", other.lora) is not built
    assert resources.component("lora", other.lora).rank == 4


def test_one_writer_makes_every_3gpp_word_file():
    """The sample corpus and the ETSI-layout fixtures give their content to one Word writer
    (components/documents/spec_word), whose bytes are reproducible."""
    from components.documents import sample_corpus
    from tests.fixtures import etsi_layout

    for module in (sample_corpus, etsi_layout):
        text = Path(module.__file__).read_text(encoding="utf-8")
        assert "import docx" not in text and "spec_word" in text, module.__name__
    doc = sample_corpus.spec_documents()[0]
    assert sample_corpus.docx_bytes(doc) == sample_corpus.docx_bytes(doc)
