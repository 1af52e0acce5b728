"""Quantization throughput: ckptkit.quant.ggml (C port of ggml's reference) vs gguf-py's numpy.

On each set of float32 tensors (--sets: "square", one 4096 x 4096 tensor by default, 67 MB, N(0, 1);
"flux", the distinct weight shapes of a FLUX.1-dev double block, `double_blocks.0.img_*` from
../shared/manifests/flux1_dev.json, 679 MB, N(0, 0.02); the txt stream repeats those shapes) and
for every type, time
  - ours with threads=1 and threads=os.cpu_count(),
  - gguf-py's `gguf.quants.quantize` where it supports the type (F16, BF16, Q8_0, Q4_x, Q5_x);
and print a markdown table of MB/s of fp32 input (best of --repeat runs; a set's time is the sum
over its tensors) with ratios. Wall time is what counts; the "1t CPU" column divides by the
thread's CPU time instead, which is the steadier number on a shared VM (other load steals wall
time, not CPU time). Where gguf-py can quantize, the bytes are compared as well (they must be
identical). The last column repeats the single-thread speed of ggml's own C reference quantizer
measured on these machines (4096x4096; docs: domain notes section 7) for comparison with "ours,
1 thread".

    python bench/bench_quant_kernels.py [--sets square,flux] [--rows 4096] [--cols 4096] [--repeat 3]
                                        [--types Q4_K,Q6_K]

CKPTKIT_GGML_SCALAR=1 in the environment times the scalar reference code instead of the SIMD paths.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ckptkit.quant import ggml as gg
from ckptkit.quant.ggml import _kernels

MANIFESTS = Path(__file__).resolve().parents[2] / "shared" / "manifests"

GGUF_PY = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
# ggml's C reference quantizer, single thread, 4096x4096 fp32, on these 2-core machines (MB/s)
GGML_C_REF = {"Q8_0": 1100, "Q4_0": 2500, "Q5_1": 2200, "Q6_K": 144, "Q5_K": 87, "Q4_K": 75, "Q3_K": 362, "Q2_K": 84}
ORDER = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def best_time(fn, tensors: list[np.ndarray], repeat: int) -> tuple[float, float, list]:
    """Best wall time and best CPU time of the calling thread for fn over all tensors, last results."""
    best, best_cpu, out = float("inf"), float("inf"), []
    for _ in range(repeat):
        wall = cpu = 0.0
        out = []
        for x in tensors:
            c0, t0 = time.thread_time(), time.perf_counter()
            out.append(fn(x))
            wall += time.perf_counter() - t0
            cpu += time.thread_time() - c0
        best, best_cpu = min(best, wall), min(best_cpu, cpu)
    return best, best_cpu, out


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "—" if v is None else format(v, spec)


def square_set(rows: int, cols: int) -> tuple[str, list[np.ndarray]]:
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    return f"{rows}x{cols} float32 N(0, 1)", [x]


def flux_set() -> tuple[str, list[np.ndarray]]:
    tensors = json.loads((MANIFESTS / "flux1_dev.json").read_text())["components"]["transformer"]["tensors"]
    shapes = {n.removeprefix("double_blocks.0."): tuple(s) for n, (s, _) in tensors.items()
              if n.startswith("double_blocks.0.img_") and len(s) == 2}
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for s in shapes.values()]
    names = ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items())
    return f"FLUX.1-dev double_blocks.0.img_* real shapes, float32 N(0, 0.02) ({names})", xs


def table(title: str, tensors: list[np.ndarray], types: list[str], repeat: int) -> None:
    n_all = os.cpu_count() or 1
    mb = sum(x.nbytes for x in tensors) / 1e6
    print(f"# {title}: {mb:.1f} MB, best of {repeat}; {platform.processor() or platform.machine()}, "
          f"{n_all} CPUs, numpy {np.__version__}, SIMD {_kernels.get_simd()}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    header = (f"| type | ours 1 thread MB/s | ours 1t CPU MB/s | ours {n_all} threads MB/s | gguf-py numpy MB/s "
              f"| ours 1t / gguf-py | ours {n_all}t / gguf-py | ours {n_all}t / 1t | ggml C ref 1t MB/s | ours 1t / ggml C |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for t in types:
        t1, c1, q1 = best_time(lambda x: gg.quantize(x, t, threads=1), tensors, repeat)
        tn, _, qn = best_time(lambda x: gg.quantize(x, t, threads=n_all), tensors, repeat)
        assert all(np.array_equal(a, b) for a, b in zip(q1, qn)), f"{t}: threads changed the bytes"
        del qn
        s1, sn = mb / t1, mb / tn
        sg = None
        if t in GGUF_PY:
            tg, _, qg = best_time(lambda x: gq.quantize(x, GGMLQuantizationType[t]), tensors, repeat)
            sg = mb / tg
            same = all(np.array_equal(np.ascontiguousarray(g).view(np.uint8).reshape(o.shape), o)
                       for g, o in zip(qg, q1))
            assert same, f"{t}: bytes differ from gguf-py"
            del qg
        ref = GGML_C_REF.get(t)
        print(
            f"| {t} | {s1:.0f} | {mb / c1:.0f} | {sn:.0f} | {fmt(sg)} | {fmt(s1 / sg if sg else None, '.1f')}x "
            f"| {fmt(sn / sg if sg else None, '.1f')}x | {sn / s1:.2f}x | {fmt(ref)} "
            f"| {fmt(s1 / ref if ref else None, '.2f')}x |".replace("—x", "—"),
            flush=True,
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="square,flux", help="comma-separated: square, flux")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(ORDER))
    args = ap.parse_args()

    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    makers = {"square": lambda: square_set(args.rows, args.cols), "flux": flux_set}
    for name in (s.strip() for s in args.sets.split(",") if s.strip()):
        if name not in makers:
            ap.error(f"unknown set {name!r} (known: {', '.join(makers)})")
        title, tensors = makers[name]()
        table(title, tensors, types, args.repeat)
        del tensors


if __name__ == "__main__":
    main()
