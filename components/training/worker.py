"""One process of a data-parallel training run (``parallel``): its job is the first line of
stdin; ``stop`` on a later line (or stdin closing) asks it to stop at the next step. It reports
on stdout, one JSON object a line: ``metrics`` (the first process only), then ``done``,
``stopped`` or ``preflight``; an unexpected error is a traceback on stderr and a non-zero exit."""
from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    from components.training import child

    # What libraries print (mlx-lm's progress table) goes to stderr, with the log.
    channel = child.channel()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    from components.training import lora
    from components.training.preflight import PreflightError

    mx = lora.import_mlx()
    world = mx.distributed.init(backend="ring", strict=True)
    cancel = threading.Event()
    child.stop_on_stdin(cancel)  # stops at the next step, keeping a checkpoint
    lock = threading.Lock()

    def emit(kind: str, value) -> None:
        with lock:
            channel.write(json.dumps({kind: value}) + "\n")
            channel.flush()

    try:
        result = lora.train(Path(spec["model_dir"]), Path(spec["data_dir"]), Path(spec["out_dir"]),
                            lora.LoraConfig(**spec["lora"]), prov=spec["prov"], system=spec["system"],
                            log_metrics=lambda m, step: emit("metrics", [m, step]) if world.rank() == 0 else None,
                            cancel=cancel, available_bytes=spec["available_bytes"])
        emit("done", result)
    except lora.TrainingStopped as exc:
        emit("stopped", [exc.step, str(exc.checkpoint) if exc.checkpoint else None])
    except PreflightError as exc:
        emit("preflight", str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
