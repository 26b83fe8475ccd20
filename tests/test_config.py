"""The Hydra app: groups compose, every option instantiates, --help and --cfg work."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, REPO

GROUPS = ["service", "model", "hardware", "docling", "lora", "extraction", "dataset", "tracking",
          "process", "acquire"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_composition_is_offline_embedded(compose):
    cfg = compose()
    assert cfg.service.name == "embedded"
    assert cfg.model.name == "smollm2-135m"
    assert cfg.hardware.name == "auto"
    assert cfg.corpus.path is None
    assert list(cfg.stages) == ["acquire", "convert", "process", "extract", "dataset",
                                "finetune", "evaluate"]


@pytest.mark.parametrize("group,expected", [
    ("service", ["embedded", "lmstudio", "ollama", "openai"]),
    ("model", ["gemma3-4b", "llama3.2-1b", "qwen3-1.7b", "smollm2-135m"]),
    ("hardware", ["auto", "linux-cpu", "m3-16gb", "m3max", "m3max-64gb", "m3pro-36gb"]),
])
def test_groups_offer_the_designed_options(group, expected):
    assert options(group) == expected


@pytest.mark.parametrize("service", ["embedded", "lmstudio", "ollama", "openai"])
def test_every_service_instantiates_with_embedded_fallback(compose, service):
    from components.llm.resilience import ResilientService
    from components.llm.resilience import chain as build_chain
    from components.llm.services import EmbeddedLlamaService
    from runner.config import build

    svc = build(compose(f"service={service}", "service.resilience.retries=7").service, "service")
    assert svc.name == service
    chain = build_chain(svc)  # composed from config: the fallback and the policy are live objects
    assert isinstance(chain, ResilientService) and chain.primary is svc and chain.retries == 7
    if service != "embedded":
        assert isinstance(chain._standby, EmbeddedLlamaService) and chain._standby.name == "embedded"
    else:
        assert chain._standby is None
    svc.close()


def test_a_bad_embedded_batch_size_fails_naming_the_key(compose):
    from runner.config import ConfigError, build

    assert build(compose("service.batch_tokens=256").service, "service").batch_tokens == 256
    with pytest.raises(ConfigError, match=r"service: batch_tokens must be at least 1 \(got 0\)"):
        build(compose("service.batch_tokens=0").service, "service")


@pytest.mark.parametrize("group", ["model", "hardware"])
def test_every_option_instantiates(compose, group):
    for opt in options(group):
        obj = instantiate(compose(f"{group}={opt}")[group])
        assert obj.name == opt


def test_help_lists_the_groups():
    out = subprocess.run([sys.executable, "-m", "runner", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for g in GROUPS:
        assert f"{g}:" in out.stdout, f"group {g} missing from --help"
    assert "ollama" in out.stdout and "m3max" in out.stdout


def test_cfg_job_prints_the_composed_config():
    out = subprocess.run([sys.executable, "-m", "runner", "service=ollama", "lora.rank=16",
                          "--cfg", "job"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.service.name == "ollama"
    assert cfg.lora.rank == 16
    assert cfg.service.fallback.name == "embedded"
