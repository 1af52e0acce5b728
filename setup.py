"""Build glue for the one C extension; all package metadata lives in pyproject.toml.

ckptkit.quant.ggml._kernels is a port of ggml's reference quantizers that must reproduce ggml's
bytes exactly, so the flags pin IEEE float32 semantics: no FMA contraction, no fast-math, and no
-march=native (a CPU-specific build could contract or reorder differently).

-O3, as ggml itself is built (CMake Release): at -O2 GCC does not unswitch loops, so the inner
loops of make_qx_quants (Q4_0, Q5_0, Q3_K, Q6_K) test the loop-invariant `qw ? ... : rmse_type ...`
weight choice on every element and run at ~0.8x of ggml's own build. The optimisation level does
not change the bytes (no flag here allows reassociation or contraction; the tests compare them).
setup.py is listed in `depends` so that editing these flags rebuilds the extension (build_ext
otherwise only looks at the .c file's timestamp).
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    extra_compile_args = ["/O2", "/fp:strict"]
else:
    extra_compile_args = ["-std=c11", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-finite-math-only"]

setup(
    ext_modules=[
        Extension(
            "ckptkit.quant.ggml._kernels",
            sources=["ckptkit/quant/ggml/_kernels.c"],
            extra_compile_args=extra_compile_args,
            depends=["setup.py"],
        ),
        Extension(
            "ckptkit.quant._libkernels",
            sources=["ckptkit/quant/_libkernels.c"],
            extra_compile_args=extra_compile_args,
            depends=["setup.py"],
        ),
    ],
)
