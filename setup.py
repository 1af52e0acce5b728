"""Build glue for the one C extension; all package metadata lives in pyproject.toml.

ckptkit.quant.ggml._kernels is a port of ggml's reference quantizers that must reproduce ggml's
bytes exactly, so the flags pin IEEE float32 semantics: no FMA contraction, no fast-math, and no
-march=native (a CPU-specific build could contract or reorder differently). -O2 comes after
Python's own CFLAGS (-O3) and wins.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    extra_compile_args = ["/O2", "/fp:strict"]
else:
    extra_compile_args = ["-std=c11", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fno-finite-math-only"]

setup(
    ext_modules=[
        Extension(
            "ckptkit.quant.ggml._kernels",
            sources=["ckptkit/quant/ggml/_kernels.c"],
            extra_compile_args=extra_compile_args,
        )
    ],
)
