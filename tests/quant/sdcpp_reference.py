"""stable-diffusion.cpp's own convert (`sd -M convert`), for tests and benchmarks: the
stable-diffusion-cpp-python 0.4.7 sdist from the package registry (the complete sd.cpp tree, ggml
included) built once with CMake into a cache outside the clone; its `convert(input, vae, output,
type, tensor_type_rules, convert_name)` is sd -M convert.

    python -m tests.quant.sdcpp_reference      # build (a few minutes on 2 cores), print where
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SDIST = "stable-diffusion-cpp-python==0.4.7"
CACHE = Path(os.environ.get("CKPTKIT_TEST_CACHE", Path.home() / ".cache" / "ckptkit-tests"))
TARGET = CACHE / "sdcpp-py"
# ggml type ids (sd_type_t) of the types sd -M convert writes
TYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12,
         "Q5_K": 13, "Q6_K": 14}


def build() -> Path:
    """The build (cached): GGML_NATIVE=OFF, which in this ggml still compiles its CPU code for
    AVX/AVX2/FMA/F16C (sd.cpp's log: "System Info: ... AVX2 = 1 | FMA = 1")."""
    if (TARGET / "stable_diffusion_cpp").is_dir():
        return TARGET
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found")
    CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=OFF", CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-binary", ":all:", "--target",
                          str(TARGET), SDIST, "-q"], capture_output=True, text=True, timeout=3000, env=env)
    if run.returncode or not (TARGET / "stable_diffusion_cpp").is_dir():
        shutil.rmtree(TARGET, ignore_errors=True)
        raise RuntimeError(f"pip install {SDIST} failed: {run.stderr.strip().splitlines()[-1:]}")
    return TARGET


def converter():
    """`convert(src, out, type_name, rules="")` running sd.cpp's own convert, in this process."""
    target = str(build())
    if target not in sys.path:
        sys.path.insert(0, target)
    from stable_diffusion_cpp import stable_diffusion_cpp as sd

    def convert(src: Path, out: Path, type_name: str, rules: str = "") -> None:
        ok = sd.convert(str(src).encode(), b"", str(out).encode(), TYPES[type_name], rules.encode(), False)
        if not ok:
            raise RuntimeError(f"sd.cpp convert of {src} to {type_name} failed")
    return convert


def sample(out_png: Path, timeout: int = 600, **paths: Path) -> subprocess.CompletedProcess:
    """One step of stable-diffusion.cpp's own txt2img (64x64, Euler A, cfg 1) on the model files
    given (`model=` a one-file bundle, or `diffusion_model=`, `clip_l=`, `vae=`, ...), in a child
    process: a GGML_ASSERT in sd.cpp aborts its process. Its log is the result's stdout."""
    build()
    args = [sys.executable, "-m", "tests.quant.sdcpp_reference", "sample", str(out_png)]
    for key, path in paths.items():
        args += [f"--{key}", str(path)]
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root)))


def _sample_here(out_png: str, paths: dict[str, str]) -> None:
    sys.path.insert(0, str(build()))
    from stable_diffusion_cpp import StableDiffusion

    sd = StableDiffusion(**{f"{k}_path": v for k, v in paths.items() if v}, n_threads=2, verbose=True)
    images = sd.generate_image(prompt="a cat", width=64, height=64, sample_steps=1, cfg_scale=1.0, seed=1)
    images[0].save(out_png)
    print(f"sampled {images[0].size[0]}x{images[0].size[1]}", flush=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("command", nargs="?", default="build", choices=["build", "sample"])
    ap.add_argument("out_png", nargs="?")
    for part in ("model", "diffusion_model", "clip_l", "clip_g", "t5xxl", "vae"):
        ap.add_argument(f"--{part}")
    a = ap.parse_args()
    if a.command == "build":
        print(build())
    else:
        sys.stdout.flush()
        os.dup2(sys.stdout.fileno(), sys.stderr.fileno())  # sd.cpp logs to stderr: one stream, in order
        _sample_here(a.out_png, {k: getattr(a, k) for k in ("model", "diffusion_model", "clip_l", "clip_g",
                                                             "t5xxl", "vae")})
