from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The suite runs in one process on purpose. Two pytest-xdist workers (one file each at a time, the
# longest files first) on 2 cores took as long as the serial run (30m55s against about 31 minutes
# on an AVX2 machine) with 17 % more CPU time, and failed a test: llama.cpp's and MLX/OpenBLAS's
# threads wait for each other by spinning, so two such processes on two cores starve each other
# (a Ray test's request to the real llama.cpp server ran past its 120 s timeout; the whole test
# takes 23-25 s serially).
CONF = REPO / "conf"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One cache folder for the test run: the embedded model is converted from its GGUF once."""
    return tmp_path_factory.mktemp("cache")


# Hydra's compose takes about 0.4 s (1.2 s under a profiler) and its result depends only on the
# overrides and conf/: composed once per override list for the test run, which took 30 of the 37
# seconds of a property test that composes per example.
_COMPOSED: dict[tuple[str, ...], object] = {}


@pytest.fixture
def compose(session_cache):
    """Compose the app's config as `python -m runner` would, with overrides (paths that Hydra
    fills at run time point into a temporary folder; the cache is the test run's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from runner.config import resolve_hardware

    def _compose(*overrides: str):
        defaults = {"cache_dir": str(session_cache), "tracking.root": str(REPO)}
        overrides = tuple(f"{k}={v}" for k, v in defaults.items()
                          if not any(o.startswith(f"{k}=") for o in overrides)) + overrides
        if overrides not in _COMPOSED:
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                _COMPOSED[overrides] = hydra_compose(config_name="config", overrides=list(overrides),
                                                     return_hydra_config=False)
        cfg = copy.deepcopy(_COMPOSED[overrides])  # tests change their config
        resolve_hardware(cfg)  # as the recipe does: components read ${hw.*}
        return cfg

    return _compose


@pytest.fixture
def offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "*")
    return os.environ


@pytest.fixture(scope="session")
def etsi_converted(tmp_path_factory):
    """The ETSI-layout fixture specs (PDF, Word, Markdown, HTML) converted through Docling:
    a list of (GeneratedDoc, DocResult)."""
    from tests.fixtures.converted import convert_fixtures

    return convert_fixtures(tmp_path_factory.mktemp("etsi"))
