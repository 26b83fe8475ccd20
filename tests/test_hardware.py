from __future__ import annotations

import logging

import pytest

from hydra.utils import instantiate

SMALL = {"memory_gb": 24.0, "available_gb": 20.0, "cpus": 2, "accelerator": "cpu"}
MAC = {"memory_gb": 128.0, "available_gb": 90.0, "cpus": 16, "accelerator": "metal"}
MAC_IDLE = {**MAC, "available_gb": 110.0}


def test_m3max_on_a_small_linux_box_is_scaled_down_with_warnings(compose, caplog):
    prof = instantiate(compose("hardware=m3max").hardware)
    with caplog.at_level(logging.WARNING):
        r = prof.resolve(SMALL)
    assert r.scaled
    assert r.accelerator == "cpu" and r.dtype == "float32"
    assert r.memory_gb == 24.0
    assert r.cpu_threads == 2
    assert r.train_batch_size == 6  # batch 32 scaled by 24/128 GB
    assert r.lora_rank == 64 and r.grad_accumulation_steps == 4
    assert r.convert_workers <= 2 and r.extract_concurrency <= 2
    text = caplog.text
    assert "128 GB" in text and "Metal" in text


def test_m3max_on_an_m3max_is_used_as_declared(compose):
    r = instantiate(compose("hardware=m3max").hardware).resolve(MAC)
    assert not r.scaled and r.warnings == ()
    assert (r.accelerator, r.dtype, r.train_batch_size, r.convert_workers) == ("metal", "bfloat16", 32, 8)
    assert (r.lora_rank, r.grad_accumulation_steps) == (64, 4)


def test_m3max_with_over_100_gb_available_trains_bigger(compose):
    r = instantiate(compose("hardware=m3max").hardware).resolve(MAC_IDLE)
    assert (r.train_batch_size, r.lora_rank, r.grad_accumulation_steps) == (64, 128, 4)


@pytest.mark.parametrize("name,mem,batch,rank", [("m3-16gb", 16, 4, 8), ("m3pro-36gb", 36, 8, 16),
                                                 ("m3max-64gb", 64, 16, 32)])
def test_smaller_apple_profiles(compose, name, mem, batch, rank):
    mac = {"memory_gb": float(mem), "available_gb": mem * 0.7, "cpus": 16, "accelerator": "metal"}
    r = instantiate(compose(f"hardware={name}").hardware).resolve(mac)
    assert not r.scaled and (r.train_batch_size, r.lora_rank, r.dtype) == (batch, rank, "bfloat16")


def test_profile_values_reach_lora_and_explicit_overrides_win(compose):
    from runner.config import build

    cfg = compose("hardware=m3max")
    lora = build(cfg.lora, "lora")
    assert (lora.rank, lora.batch_size, lora.grad_accumulation_steps) == (
        cfg.hw.lora_rank, cfg.hw.train_batch_size, cfg.hw.grad_accumulation_steps) == (64, cfg.hw.train_batch_size, 4)
    lora = build(compose("hardware=m3max", "lora.rank=16", "lora.grad_accumulation_steps=1").lora, "lora")
    assert (lora.rank, lora.grad_accumulation_steps) == (16, 1)


def test_bad_tier_key_fails_naming_it(compose):
    from runner.config import ConfigError, build

    with pytest.raises(ConfigError, match="hardware.*tiers"):
        build(compose("hardware=m3max", "hardware.tiers=[{min_available_gb: 1, batch: 2}]").hardware, "hardware")


def test_auto_follows_the_machine(compose):
    prof = instantiate(compose().hardware)
    small, mac = prof.resolve(SMALL), prof.resolve(MAC)
    assert not small.scaled and small.dtype == "float32" and small.cpu_threads == 2
    assert mac.dtype == "bfloat16" and mac.cpu_threads == 16


def test_training_runs_in_two_processes_on_a_cpu_and_in_one_on_metal(compose):
    from components.hardware import HardwareProfile

    prof = instantiate(compose().hardware)
    assert prof.resolve(SMALL).train_workers == 2 and prof.resolve(MAC).train_workers == 1
    one_core = {**SMALL, "cpus": 1}
    assert prof.resolve(one_core).train_workers == 1
    # The batch is split between the processes: an odd one stays in one.
    assert HardwareProfile("odd", train_batch_size=3).resolve(SMALL).train_workers == 1
    assert HardwareProfile("declared", train_workers=4).resolve(SMALL).train_workers == 4
    cfg = compose("hardware=linux-cpu")
    from runner.config import resolve_hardware

    resolve_hardware(cfg)
    assert cfg.lora.workers == cfg.hw.train_workers >= 1
    assert compose("lora.workers=1").lora.workers == 1


def test_auto_detects_this_machine(compose):
    r = instantiate(compose().hardware).resolve()
    assert r.memory_gb > 0 and r.cpu_threads >= 1 and r.train_batch_size >= 1
    assert 0 < r.available_gb <= r.memory_gb
