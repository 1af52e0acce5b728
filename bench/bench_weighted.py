"""ggml's weighted quantizers (importance weights; what stable-diffusion.cpp's convert runs, with all
ones): ckptkit.quant.ggml (our C port) against ggml's own `ggml_quantize_chunk` (ggml 0.9.8 built from
the stable-diffusion-cpp-python 0.4.7 sdist: tests/quant/ggml_reference.py), in the same process, on
the same rows, with the same all-ones weights; bytes compared (they must be identical).

For each type: ours with 1 thread and with os.cpu_count() threads, ggml with 1 thread (it has no
threads of its own here: sd.cpp splits rows over threads itself). Each figure is the median of
--repeat runs of the thread's CPU time (steadier than wall time on a shared VM; the multi-thread
column is wall time), as MB/s of float32 input, and the ratio ours/ggml single-threaded.

    python bench/bench_weighted.py [--rows 1024] [--cols 4096] [--repeat 5] [--types Q4_K,Q6_K]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ckptkit.quant import ggml  # noqa: E402
from tests.quant import ggml_reference as ref  # noqa: E402

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    theirs = ref.quantize_chunk(ref.build())
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    w = np.ones(args.cols, np.float32)
    mb = x.nbytes / 1e6
    threads = os.cpu_count() or 1
    print(f"{args.rows} x {args.cols} float32 ({mb:.0f} MB), all-ones weights, median of {args.repeat}; "
          f"{threads} CPUs\n")
    print(f"| type | ours, 1 thread (MB/s CPU) | ggml, 1 thread (MB/s CPU) | ours / ggml | ours, {threads} threads (MB/s wall) | bytes |")
    print("|---|---|---|---|---|---|")
    for name in args.types.split(","):
        rb = ggml.row_bytes(name, args.cols)
        o1, g1, on = [], [], []
        for _ in range(args.repeat):  # paired: both in the same round
            t = time.thread_time(); a = ggml.quantize(x, name, threads=1, weights=w); o1.append(time.thread_time() - t)
            t = time.thread_time(); b = theirs(name, x, w, rb); g1.append(time.thread_time() - t)
            t = time.perf_counter(); ggml.quantize(x, name, threads=threads, weights=w); on.append(time.perf_counter() - t)
        same = "identical" if np.array_equal(a, b) else "DIFFER"
        o, g, n = (statistics.median(v) for v in (o1, g1, on))
        print(f"| {name} | {mb / o:.0f} | {mb / g:.0f} | {g / o:.2f}x | {mb / n:.0f} | {same} |")


if __name__ == "__main__":
    main()
