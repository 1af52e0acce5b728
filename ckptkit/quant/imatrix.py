"""Importance matrices for ggml's weighted quantizers (`--imatrix`).

`ones`: every column weighs the same, which is what stable-diffusion.cpp's convert passes to ggml
when it has no imatrix (src/model_loader.cpp convert_tensor: `imatrix.resize(n_per_row, 1.0f)`), so
its q4_0/q4_1/q5_0/q5_1/q2_K..q6_K bytes come from ggml's weighted search, not the reference one.

FILE: the imatrix files stable-diffusion.cpp writes (`--imat-out`, src/runtime/imatrix.cpp
save_imatrix): llama.cpp's legacy binary layout, little-endian,

    int32 n_entries
    n_entries x { int32 len; char name[len]; int32 ncall; int32 nval; float32 values[nval] }
    int32 last_call   (may be absent)

keyed by stable-diffusion.cpp's own tensor names (`model.diffusion_model.input_blocks...`). Several
files are summed, as `--imat-in` does; a tensor with no entry weighs all ones, as in sd.cpp. Read
strictly: every count is checked against the bytes left.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ckptkit.errors import CkptError, printable
from ckptkit.formats.files import open_regular

MAX_BYTES = 4 << 30
# where our names sit in stable-diffusion.cpp's: the diffusion model under its bundle prefix
SDCPP_PREFIX = {"diffusion_model": "model.diffusion_model."}


def imatrix_key(component: str, name: str) -> str:
    """sd.cpp's name for a tensor of a component file (a bundle's names are sd.cpp's already)."""
    return SDCPP_PREFIX.get(component, "") + name


@dataclass
class Imatrix:
    source: str  # "ones" or the file names
    values: dict[str, np.ndarray] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def for_tensor(self, key: str, n_per_row: int) -> np.ndarray:
        """The weights of one tensor's columns by its sd.cpp name (ones where the matrix has no entry)."""
        got = self.values.get(key)
        if got is None or got.size != n_per_row:
            return np.ones(n_per_row, np.float32)
        self.used.add(key)
        return got


def load(spec: str) -> Imatrix:
    """`ones`, or comma-separated imatrix files (summed)."""
    if spec == "ones":
        return Imatrix("ones")
    total: dict[str, np.ndarray] = {}
    for part in spec.split(","):
        for name, values in read_file(Path(part)).items():
            if name in total and total[name].size != values.size:
                raise CkptError(f"--imatrix {part}: {printable(name)} has {values.size} values, another file "
                                f"{total[name].size}")
            total[name] = total[name] + values if name in total else values
    return Imatrix(spec, total)


def read_file(path: Path) -> dict[str, np.ndarray]:
    with open_regular(path) as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CkptError(f"{path}: too large for an imatrix file")
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise CkptError(f"{path}: not an imatrix file ({what} runs past the end at byte {pos})")
        out = data[pos:pos + n]
        pos += n
        return out

    (n_entries,) = struct.unpack("<i", take(4, "entry count"))
    if n_entries < 1 or n_entries > len(data) // 17:
        raise CkptError(f"{path}: not an imatrix file ({n_entries} entries cannot fit in {len(data)} bytes)")
    out: dict[str, np.ndarray] = {}
    for _ in range(n_entries):
        (length,) = struct.unpack("<i", take(4, "name length"))
        if not 0 < length <= 4096:
            raise CkptError(f"{path}: not an imatrix file (a name of {length} bytes)")
        try:
            name = take(length, "name").decode("utf-8")
        except UnicodeDecodeError:
            raise CkptError(f"{path}: not an imatrix file (a name that is not UTF-8)") from None
        ncall, nval = struct.unpack("<ii", take(8, "counts"))
        if ncall < 0 or nval < 1:
            raise CkptError(f"{path}: {printable(name)}: {nval} values from {ncall} calls")
        values = np.frombuffer(take(4 * nval, "values"), dtype="<f4").astype(np.float32)
        if not np.isfinite(values).all() or (values < 0).any():
            raise CkptError(f"{path}: {printable(name)}: values must be finite and non-negative")
        if name in out:
            raise CkptError(f"{path}: {printable(name)} twice")
        out[name] = values
    if len(data) - pos not in (0, 4):  # the trailing last_call, or nothing
        raise CkptError(f"{path}: not an imatrix file ({len(data) - pos} bytes after the last entry)")
    return out


def write_file(path: Path, values: dict[str, np.ndarray], ncall: int = 1) -> None:
    """The same layout (for tests and for tools that make one)."""
    with open(path, "wb") as fh:
        fh.write(struct.pack("<i", len(values)))
        for name, v in values.items():
            raw = name.encode("utf-8")
            fh.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, v.size))
            fh.write(np.asarray(v, dtype="<f4").tobytes())
        fh.write(struct.pack("<i", 0))
