from __future__ import annotations

import logging

from hydra.utils import instantiate

SMALL = {"memory_gb": 24.0, "cpus": 2, "accelerator": "cpu"}
MAC = {"memory_gb": 128.0, "cpus": 16, "accelerator": "metal"}


def test_m3max_on_a_small_linux_box_is_scaled_down_with_warnings(compose, caplog):
    prof = instantiate(compose("hardware=m3max").hardware)
    with caplog.at_level(logging.WARNING):
        r = prof.resolve(SMALL)
    assert r.scaled
    assert r.accelerator == "cpu" and r.dtype == "float32"
    assert r.memory_gb == 24.0
    assert r.cpu_threads == 2
    assert r.train_batch_size == 6  # 24 GB at ~4 GB per batch element
    assert r.convert_workers <= 2 and r.extract_concurrency <= 2
    text = caplog.text
    assert "128 GB" in text and "Metal" in text


def test_m3max_on_an_m3max_is_used_as_declared(compose):
    r = instantiate(compose("hardware=m3max").hardware).resolve(MAC)
    assert not r.scaled and r.warnings == ()
    assert (r.accelerator, r.dtype, r.train_batch_size, r.convert_workers) == ("metal", "bfloat16", 8, 8)


def test_auto_follows_the_machine(compose):
    prof = instantiate(compose().hardware)
    small, mac = prof.resolve(SMALL), prof.resolve(MAC)
    assert not small.scaled and small.dtype == "float32" and small.cpu_threads == 2
    assert mac.dtype == "bfloat16" and mac.cpu_threads == 16


def test_auto_detects_this_machine(compose):
    r = instantiate(compose().hardware).resolve()
    assert r.memory_gb > 0 and r.cpu_threads >= 1 and r.train_batch_size >= 1
