"""``python -m runner.health [group=option ...] [key=value ...]``: is everything the composed
config needs up? Same config groups and overrides as ``python -m runner``.

Prints one row per component (status, latency, version, models, what to do) and exits 1 when
something the config needs for its stages is down.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from components import health as H
from components.llm.errors import ServiceFailure

CONF = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from runner.config import resolve_hardware

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(Path.cwd())  # ${hydra:runtime.cwd} in cache_dir
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)
    resolve_hardware(cfg)
    return cfg


def rows(cfg: DictConfig) -> list[dict]:
    from runner.config import build

    stages = set(cfg.stages)
    out: list[dict] = []
    needs_llm = "extract" in stages
    svc = build(cfg.service, "service")
    try:
        out.append(H.service(svc, needed=needs_llm))
        fallback = svc.chain_config.fallback
        if fallback is not None and svc.chain_config.on_unavailable == "fallback":
            out.append(H.service(fallback, needed=False, role="fallback"))
    finally:
        svc.close()
        if svc.chain_config.fallback is not None:
            svc.chain_config.fallback.close()
    out.append(H.mlx(needed=bool({"finetune", "evaluate"} & stages)))
    out.append(H.docling(list(cfg.docling.formats), cfg.docling.artifacts_path, needed="convert" in stages))
    out.append(H.rust(str(cfg.process.engine), needed="process" in stages))
    out.append(H.disk(cfg.cache_dir, float(cfg.alerts.disk_free_gb)))
    return out


def table(found: list[dict]) -> str:
    head = ["component", "status", "latency", "version", "models", "detail"]
    lines = []
    for r in found:
        lat = f"{r['latency_ms']:.0f} ms" if r.get("latency_ms") is not None else "-"
        models = ", ".join(r.get("models") or [])[:40] or "-"
        status = r["status"] + ("" if r["needed"] else " (not needed)")
        lines.append([r["component"], status, lat, r.get("version") or "-", models, r.get("detail") or ""])
    widths = [max(len(head[i]), *(len(l[i]) for l in lines)) for i in range(5)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths), "------"),
                      *(fmt.format(*l) for l in lines)])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from runner.config import ConfigError

    try:
        cfg = compose(args)
        found = rows(cfg)
    except (ConfigError, ServiceFailure) as exc:
        print(f"health: {exc}", file=sys.stderr)
        return 2
    print(table(found))
    down = [r for r in found if r["needed"] and r["status"] == "down"]
    if down:
        print(f"\n{len(down)} needed component(s) down: " + "; ".join(
            f"{r['component']}: {r['detail']}" for r in down), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
