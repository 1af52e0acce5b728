"""ggml's own `ggml_quantize_chunk`, as a reference for our kernels: a build of ggml-base from the
ggml that stable-diffusion.cpp vendors (stable-diffusion-cpp-python 0.4.7 on the package registry),
cached outside the clone, and the weighted-quantization vectors made with it.

    python -m tests.quant.ggml_reference build            # sdist -> ~/.cache/ckptkit-tests/ggml-0.9.8
    python -m tests.quant.ggml_reference vectors          # rewrite tests/quant/data/ggml_weighted_vectors.npz
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

SDIST = "stable-diffusion-cpp-python==0.4.7"
CACHE = Path(os.environ.get("CKPTKIT_TEST_CACHE", Path.home() / ".cache" / "ckptkit-tests")) / "ggml-0.9.8"
LIB = CACHE / "build" / "src" / "libggml-base.so"
VECTORS = Path(__file__).parent / "data" / "ggml_weighted_vectors.npz"
TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def build() -> Path:
    """Download the sdist, build its ggml-base (CPU, no -march=native: no FMA contraction). Raises
    RuntimeError with the reason when something needed is missing."""
    if LIB.exists():
        return LIB
    for tool in ("cmake", "cc"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found")
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / "sdist"
    if not src.exists():
        dl = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", SDIST,
                             "-d", str(CACHE / "dl"), "-q"], capture_output=True, text=True, timeout=600)
        if dl.returncode:
            raise RuntimeError(f"pip download {SDIST} failed: {dl.stderr.strip().splitlines()[-1:]}")
        archive = next((CACHE / "dl").glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(CACHE / "x", filter="data")
        next((CACHE / "x").iterdir()).rename(src)
    ggml = src / "vendor" / "stable-diffusion.cpp" / "ggml"
    for cmd in (["cmake", "-S", str(ggml), "-B", str(CACHE / "build"), "-DCMAKE_BUILD_TYPE=Release",
                 "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON"],
                ["cmake", "--build", str(CACHE / "build"), "--target", "ggml-base", "-j2"]):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if run.returncode:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {run.stderr.strip().splitlines()[-1:]}")
    return LIB


def quantize_chunk(lib_path: Path):
    lib = ctypes.CDLL(str(lib_path))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]

    def run(type_name: str, x: np.ndarray, weights: np.ndarray | None, row_bytes: int) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((x.shape[0], row_bytes), np.uint8)
        w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        fn(TYPES[type_name], x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
           None if w is None else w.ctypes.data)
        return out
    return run


def cases(seed: int = 0):
    """(name, rows, weights): scales from 1e-3 to 30, zero groups, all-ones (sd.cpp) and imatrix-like weights."""
    rng = np.random.default_rng(seed)
    for cols, kind in ((256, "ones"), (512, "imatrix"), (1024, "ones"), (768, "imatrix")):
        x = (rng.standard_normal((12, cols)) * rng.choice([1e-3, 1.0, 30.0], size=(12, 1))).astype(np.float32)
        x[2, :64] = 0.0
        x[5] = np.abs(x[5])
        w = np.ones(cols, np.float32) if kind == "ones" else (rng.random(cols) ** 2 * 50).astype(np.float32)
        yield f"{cols}_{kind}", x, w


def vectors(lib_path: Path) -> None:
    from ckptkit.quant import ggml

    run = quantize_chunk(lib_path)
    data = {}
    for case, x, w in cases():
        data[f"x/{case}"], data[f"w/{case}"] = x, w
        for name in TYPES:
            data[f"q/{name}/{case}"] = run(name, x, w, ggml.row_bytes(name, x.shape[1]))
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(VECTORS, **data)
    print(f"wrote {VECTORS} ({VECTORS.stat().st_size} bytes)")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "build"
    lib = build()
    if what == "vectors":
        vectors(lib)
    else:
        print(lib)
