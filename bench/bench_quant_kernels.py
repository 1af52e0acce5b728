"""Quantization throughput: ckptkit.quant.ggml (C port of ggml's reference) vs gguf-py's numpy.

On one float32 tensor (4096 x 4096 by default, 67 MB) and for every type, time
  - ours with threads=1 and threads=os.cpu_count(),
  - gguf-py's `gguf.quants.quantize` where it supports the type (F16, BF16, Q8_0, Q4_x, Q5_x);
and print a markdown table of MB/s of fp32 input (best of --repeat runs) with ratios. Wall time is
what counts; the "1t CPU" column divides by the thread's CPU time instead, which is the steadier
number on a shared VM (other load steals wall time, not CPU time). Where
gguf-py can quantize, the bytes are compared as well (they must be identical). The last column
repeats the single-thread speed of ggml's own C reference quantizer measured on these machines
(docs: domain notes section 7) for comparison with "ours, 1 thread".

    python bench/bench_quant_kernels.py [--rows 4096] [--cols 4096] [--repeat 3] [--types Q4_K,Q6_K]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ckptkit.quant import ggml as gg

GGUF_PY = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
# ggml's C reference quantizer, single thread, 4096x4096 fp32, on these 2-core machines (MB/s)
GGML_C_REF = {"Q8_0": 1100, "Q4_0": 2500, "Q5_1": 2200, "Q6_K": 144, "Q5_K": 87, "Q4_K": 75, "Q3_K": 362, "Q2_K": 84}
ORDER = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def best_time(fn, repeat: int) -> tuple[float, float, object]:
    """Best wall time, best CPU time of the calling thread, last result."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.thread_time() - c0)
    return best, best_cpu, out


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "—" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(ORDER))
    args = ap.parse_args()

    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    n_all = os.cpu_count() or 1
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32)
    mb = x.nbytes / 1e6

    print(f"# {args.rows}x{args.cols} float32 ({mb:.1f} MB), best of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {n_all} CPUs, numpy {np.__version__}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    header = (f"| type | ours 1 thread MB/s | ours 1t CPU MB/s | ours {n_all} threads MB/s | gguf-py numpy MB/s "
              f"| ours 1t / gguf-py | ours {n_all}t / gguf-py | ours {n_all}t / 1t | ggml C ref 1t MB/s | ours 1t / ggml C |")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for t in types:
        t1, c1, q1 = best_time(lambda: gg.quantize(x, t, threads=1), args.repeat)
        tn, _, qn = best_time(lambda: gg.quantize(x, t, threads=n_all), args.repeat)
        assert np.array_equal(q1, qn), f"{t}: threads changed the bytes"
        s1, sn = mb / t1, mb / tn
        sg = None
        if t in GGUF_PY:
            tg, _, qg = best_time(lambda: gq.quantize(x, GGMLQuantizationType[t]), args.repeat)
            sg = mb / tg
            same = np.array_equal(np.ascontiguousarray(qg).view(np.uint8).reshape(q1.shape), q1)
            assert same, f"{t}: bytes differ from gguf-py"
        ref = GGML_C_REF.get(t)
        print(
            f"| {t} | {s1:.0f} | {mb / c1:.0f} | {sn:.0f} | {fmt(sg)} | {fmt(s1 / sg if sg else None, '.1f')}x "
            f"| {fmt(sn / sg if sg else None, '.1f')}x | {sn / s1:.2f}x | {fmt(ref)} "
            f"| {fmt(s1 / ref if ref else None, '.2f')}x |".replace("—x", "—"),
            flush=True,
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
