"""A GGUF file's metadata and tensors, read straight from its bytes.

gguf-py's ``GGUFReader`` makes a numpy view for every part of every field: the 49,152 tokens and
48,900 merges of SmolLM2's tokenizer took 5.9 s of a 11.6 s conversion on 2 cores. Here a field
is read with ``struct`` and a tensor is a view of the memory-mapped file, as the reader makes it
(``tests/test_gguf_convert.py`` compares the two on the real file).
"""
from __future__ import annotations

import os
import struct
from typing import Any, NamedTuple

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class Tensor(NamedTuple):
    name: str
    tensor_type: Any   # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF's order: the fastest-varying dimension first
    data: np.ndarray   # as GGUFReader gives it: elements for float types, bytes per row for quantized ones


_STRUCTS = {f: struct.Struct("<" + f) for f in _SCALARS.values()}


class _Cursor:
    """Reads through a memoryview of the file: a slice of the memmap itself would be a new numpy
    memmap object per string, as slow as the reader this replaces."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.at = buf, 0

    def take(self, fmt: str) -> Any:
        st = _STRUCTS[fmt]
        value = st.unpack_from(self.buf, self.at)[0]
        self.at += st.size
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.at + n > len(self.buf):
            raise ValueError(f"a string of {n} bytes runs past the end of the file at byte {self.at}")
        s = bytes(self.buf[self.at:self.at + n]).decode("utf-8")
        self.at += n
        return s

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.take("I"), self.take("Q")
            if item in _SCALARS:
                dtype = np.dtype("<" + _SCALARS[item])
                out = np.frombuffer(self.buf, dtype, n, self.at).tolist()
                self.at += n * dtype.itemsize
                return out
            return [self.value(item) for _ in range(n)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown value type {kind} at byte {self.at}")
        return self.take(_SCALARS[kind])


def read(path: str | os.PathLike) -> tuple[dict[str, Any], list[Tensor]]:
    """(metadata, tensors) of a little-endian GGUF file of version 2 or 3. Raises ValueError
    (or struct.error) on anything else."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    data = np.memmap(path, mode="r")
    c = _Cursor(memoryview(data))
    if bytes(data[:4]) != MAGIC:
        raise ValueError("GGUF magic invalid")
    c.at = 4
    version = c.take("I")
    if version not in VERSIONS:
        raise ValueError(f"GGUF version {version} (big-endian, or unknown) is not supported")
    n_tensors, n_fields = c.take("Q"), c.take("Q")
    meta: dict[str, Any] = {}
    for _ in range(n_fields):
        key = c.string()
        meta[key] = c.value(c.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        dims = tuple(c.take("Q") for _ in range(c.take("I")))
        infos.append((name, dims, c.take("I"), c.take("Q")))
    align = int(meta.get("general.alignment", DEFAULT_ALIGNMENT))
    if align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment {align} is not a power of two")
    start = -(-c.at // align) * align
    plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
             GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
             GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
             GGMLQuantizationType.I64: np.int64}
    tensors, seen = [], set()
    for name, dims, kind, offset in infos:
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice")
        seen.add(name)
        qtype = GGMLQuantizationType(kind)
        block, size = GGML_QUANT_SIZES[qtype]
        n_bytes = int(np.prod(dims, dtype=np.int64)) * size // block
        at = start + offset
        if at + n_bytes > len(data):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        shape = tuple(reversed(dims))
        raw = data[at:at + n_bytes]
        if qtype in plain:
            arr = raw.view(plain[qtype]).reshape(shape)
        else:
            arr = raw.reshape(quant_shape_to_byte_shape(shape, qtype))
        tensors.append(Tensor(name, qtype, dims, arr))
    return meta, tensors
