"""``python -m runner [group=option ...] [key=value ...]``, ``-m`` for sweeps, ``--help``."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.app import run

    return run(cfg)


if __name__ == "__main__":
    main()
