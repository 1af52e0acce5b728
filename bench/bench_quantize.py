"""GGUF quantization benchmarks (results: docs/BENCHMARKS.md, "## GGUF quantization").

Parts (--parts, default all of them, in this order):

  kernels  throughput in MB/s of float32 input, per type: ours (ckptkit.quant.ggml, threads=1 and
           threads=os.cpu_count()) against gguf-py's numpy `gguf.quants.quantize` where it supports
           the type, on the same tensors: one 4096x4096 float32 tensor, and the distinct weight
           shapes of a FLUX.1-dev double block (`double_blocks.0.img_*`: qkv, proj, mlp.0, mlp.2,
           mod; the txt stream repeats them) with real shapes from ../shared/manifests and random
           N(0, 0.02) weights. Bytes are compared with gguf-py's where it can quantize.
  sdxl     a real-shape SDXL base UNet component file (prefix-stripped original names, fp16, random
           weights, 5.1 GB) -> `ckptkit quantize FILE -o OUT.gguf --type q4_k_m` under
           `/usr/bin/time -v`: peak RSS and wall time.
  qwen_image  the same for Qwen-Image's 20B transformer (ckptkit's manifests/qwen_image.json), whole
           when the disk holds the 40.9 GB file and its output with 10 GB to spare.
  wan      the same for one Wan 2.2 A14B expert (manifests/wan2_1_t2v_14b.json: the Wan 2.1 T2V 14B
           layout, 28.6 GB in bf16, the 5-D patch embedding included).
  flux     the same for a real-shape FLUX.1-dev transformer-only bf16 file (23.8 GB). With under
           --min-free-gb free on the work folder's disk, only the first --flux-blocks double and
           single blocks (plus every non-block tensor) are written and the wall time is
           extrapolated by parameter count (said so in the output); peak RSS does not scale with
           the file (tensors are streamed one at a time) and is reported as measured.

    python bench/bench_quantize.py [--parts kernels,sdxl,flux,qwen_image,wan] [--workdir bench/out/quantize] [--keep]

Prints markdown tables and writes WORKDIR/results.json. Big files are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from gguf import quants as gq

from ckptkit.quant import ggml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT.parent / "shared" / "manifests"
ORDER = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
GGUF_PY = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}


def machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {"cpus": os.cpu_count(), "ram_gib": round(int(mem) / 2**20, 1), "arch": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "date": time.strftime("%Y-%m-%d"), "load_before": os.getloadavg()[0]}


def manifest(name: str, component: str) -> dict[str, tuple[tuple[int, ...], str]]:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    return {k: (tuple(v[0]), v[1]) for k, v in data["components"][component]["tensors"].items()}


def rand(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.02).to(dtype)


# --- kernels ---------------------------------------------------------------------------------------


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def kernel_throughput(tensors: list[np.ndarray], repeat: int) -> list[dict]:
    n_all = os.cpu_count() or 1
    mb = sum(t.nbytes for t in tensors) / 1e6
    rows = []
    for qtype in ORDER:
        row = {"type": qtype}
        for label, threads in (("ours_1t", 1), (f"ours_{n_all}t", n_all)):
            best = min(sum(_timed(lambda t=t: ggml.quantize(t, qtype, threads=threads))[0] for t in tensors)
                       for _ in range(repeat))
            row[label] = mb / best
        if qtype in GGUF_PY:
            gtype = GGMLQuantizationType[qtype]
            best, same = float("inf"), True
            for i in range(repeat):
                total = 0.0
                for t in tensors:
                    dt, theirs = _timed(lambda t=t: gq.quantize(t, gtype))
                    total += dt
                    if i == 0:
                        same &= np.array_equal(np.ascontiguousarray(theirs).view(np.uint8).reshape(-1),
                                               ggml.quantize(t, qtype).reshape(-1))
                    del theirs
                best = min(best, total)
            row["gguf_py"], row["same_bytes"] = mb / best, same
        rows.append(row)
        print(f"  {qtype}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return rows


def kernels_table(title: str, rows: list[dict]) -> str:
    n_all = os.cpu_count() or 1
    k_all = f"ours_{n_all}t"
    out = [f"**{title}**", "",
           f"| type | ours 1 thread MB/s | ours {n_all} threads MB/s | gguf-py numpy MB/s | ours 1t / gguf-py "
           f"| ours {n_all}t / gguf-py | same bytes |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        g = r.get("gguf_py")
        if g:
            cells = [f"{g:.0f}", f"{r['ours_1t'] / g:.1f}x", f"{r[k_all] / g:.1f}x", "yes" if r["same_bytes"] else "NO"]
        else:
            cells = ["—", "—", "—", "— (gguf-py: NotImplementedError)"]
        out.append(f"| {r['type']} | {r['ours_1t']:.0f} | {r[k_all]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def part_kernels(results: dict, repeat: int) -> str:
    square = [rand((4096, 4096), 0).numpy()]
    flux = manifest("flux1_dev", "transformer")
    names = [n for n, (s, _) in flux.items() if n.startswith("double_blocks.0.img_") and len(s) == 2]
    block = [rand(flux[n][0], i + 1).numpy() for i, n in enumerate(names)]
    print(f"kernels: 4096x4096 float32 ({square[0].nbytes / 1e6:.0f} MB), best of {repeat}", flush=True)
    a = kernel_throughput(square, repeat)
    shapes = ", ".join(f"{n.removeprefix('double_blocks.0.')} {'x'.join(map(str, flux[n][0]))}" for n in names)
    mb = sum(t.nbytes for t in block) / 1e6
    print(f"kernels: FLUX.1 double_blocks.0 img weights ({mb:.0f} MB float32): {shapes}, 1 run", flush=True)
    b = kernel_throughput(block, 1)
    results["kernels"] = {"square": a, "flux_double_block": {"tensors": shapes, "mb": mb, "rows": b}}
    return "\n\n".join([kernels_table("one 4096x4096 float32 tensor (67 MB)", a),
                        kernels_table(f"FLUX.1-dev `double_blocks.0.img_*` weights, real shapes ({mb:.0f} MB "
                                      f"float32: {shapes})", b)])


# --- whole files through the command ------------------------------------------------------------


def write_file(path: Path, tensors: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """Random weights in the manifest's shapes and dtypes, streamed one tensor at a time."""
    from ckptkit.formats.safetensors import SafetensorsWriter

    codes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    specs = [(n, d if d in codes else "F16", s) for n, (s, d) in tensors.items()]
    with SafetensorsWriter(path, specs) as writer:
        for i, (name, dtype, shape) in enumerate(specs):
            t = torch.empty(shape, dtype=codes[dtype])
            t.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(i))
            writer.write(name, t)
            del t
    return path.stat().st_size


def timed_quantize(src: Path, out: Path, qtype: str) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ckptkit.cli", "quantize", str(src), "-o", str(out),
           "--type", qtype, "--force"]
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"quantize failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    secs = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr).group(1))
    types = next((line for line in proc.stdout.splitlines() if line.startswith("diffusion_model ")), "")
    return {"command": " ".join(["/usr/bin/time -v ckptkit"] + cmd[5:]), "peak_rss": rss, "wall_s": secs,
            "cpu_s": user + system, "out_bytes": out.stat().st_size, "load_before": load,
            "load_after": os.getloadavg()[0], "types": re.sub(r"\s{2,}", " | ", types.strip())}


def planned(tensors: dict, family: str, qtype: str = "q4_k_m") -> tuple[int, int]:
    """(GGUF tensor bytes, parameters in quantized tensors) the policy gives these names and shapes:
    decisions depend on names and shapes only (the NaN/overflow scan aside), so this is exact for
    the whole model even when only part of it is written."""
    from ckptkit.families import get_family
    from ckptkit.quant.plan import CONV_RESHAPE_FAMILIES
    from ckptkit.quant.policy import decide, edge_prefixes
    from ckptkit.quant.types import PLAIN, nbytes, parse_request

    comp, request = get_family(family).diffusion_model, parse_request(qtype)
    total = quantized = 0
    edges = edge_prefixes(comp, tensors)
    for name, (shape, dtype) in tensors.items():
        d = decide(name, shape, dtype, comp, request, [], family in CONV_RESHAPE_FAMILIES, edges)
        total += nbytes(d.type, d.stored_shape) if d.type not in PLAIN else math.prod(shape) * (4 if d.type == "F32" else 2)
        quantized += math.prod(shape) if d.type not in PLAIN else 0
    return total, quantized


def run_file(results: dict, key: str, label: str, src: Path, tensors: dict, keep: bool, scale: float = 1.0,
             note: str = "", full: dict | None = None, family: str = "") -> str:
    print(f"{key}: writing {src.name} ({sum(math.prod(s) for s, _ in tensors.values()) / 1e9:.2f}B params)",
          flush=True)
    t0 = time.perf_counter()
    size = write_file(src, tensors)
    print(f"{key}: {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s; quantizing", flush=True)
    out = src.with_suffix(".Q4_K_M.gguf")
    try:
        r = timed_quantize(src, out, "q4_k_m")
    finally:
        if not keep:
            src.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
    r.update(src_bytes=size, params=sum(math.prod(s) for s, _ in tensors.values()), scale=scale, note=note)
    r["planned_bytes"], quant_params = planned(tensors, family)
    if full is not None:  # wall/CPU time scale with the quantized work; the output size is planned exactly
        r["full_planned_bytes"], full_quant = planned(full, family)
        r["time_scale"] = scale = full_quant / quant_params
    results[key] = r
    print(f"{key}: peak RSS {r['peak_rss'] / 2**30:.2f} GiB, wall {r['wall_s']:.0f} s", flush=True)
    fp32_mb = r["params"] * 4 / 1e6
    line = (f"| {label} | {size / 1e9:.2f} GB | {r['out_bytes'] / 1e9:.2f} GB | {r['peak_rss'] / 2**30:.2f} GiB | "
            f"{r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | {fp32_mb / r['wall_s']:.0f} | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} |")
    if full is not None:
        full_src = sum(math.prod(s) * 2 for s, _ in full.values())
        line += (f"\n| {label.split(' (')[0]}, whole model: size and GGUF planned exactly, times extrapolated "
                 f"(x{scale:.2f}, by quantized parameters) | {full_src / 1e9:.1f} GB | "
                 f"{r['full_planned_bytes'] / 1e9:.2f} GB | {r['peak_rss'] / 2**30:.2f} GiB (bounded by the "
                 f"largest tensors, not the file) | ~{r['wall_s'] * scale:.0f} s | ~{r['cpu_s'] * scale:.0f} s | — | — |")
    return line


FILE_HEADER = ("| file | size | Q4_K_M GGUF | peak RSS | wall | CPU (user+sys) | MB/s of fp32-equivalent input "
               "| load avg before / after |\n|---|---:|---:|---:|---:|---:|---:|---|")


def part_sdxl(results: dict, workdir: Path, keep: bool) -> str:
    tensors = manifest("sdxl_base", "diffusion_model")
    return run_file(results, "sdxl", "SDXL base UNet, fp16 (1680 tensors)", workdir / "sdxl_unet.safetensors",
                    tensors, keep, family="sdxl")


def part_flux(results: dict, workdir: Path, keep: bool, min_free_gb: float, blocks: int) -> str:
    tensors = manifest("flux1_dev", "transformer")
    full = sum(math.prod(s) for s, _ in tensors.values())
    free = shutil.disk_usage(workdir).free / 1e9
    note, whole = f"{free:.0f} GB free on the work disk: the whole model", tensors
    partial = None
    if free < min_free_gb:
        keep_re = re.compile(rf"^(double|single)_blocks\.(\d+)\.")
        tensors = {n: v for n, v in tensors.items() if not (m := keep_re.match(n)) or int(m.group(2)) < blocks}
        partial = whole
        note = (f"only {free:.0f} GB free on the work disk (< {min_free_gb:.0f}): the first {blocks} double and "
                f"single blocks plus every non-block tensor ({sum(math.prod(s) for s, _ in tensors.values()) / full:.0%}"
                f" of the parameters); times extrapolated by quantized parameters")
    print(f"flux: {note}", flush=True)
    return run_file(results, "flux", f"FLUX.1-dev transformer, bf16 ({len(tensors)} tensors)",
                    workdir / "flux1_dev.safetensors", tensors, keep, 1.0, note, partial, "flux")


def part_manifest(results: dict, workdir: Path, keep: bool, blocks: int, key: str, manifest_name: str,
                  family: str, block_prefix: str, title: str) -> str:
    """A released transformer from ckptkit's manifests/<manifest_name>.json (Qwen-Image's 20B: 1933
    tensors, 40.9 GB in bf16; one Wan 2.2 A14B expert = Wan 2.1 T2V 14B: 1095 tensors, 28.6 GB): the
    whole model when the disk holds it and its Q4_K_M output with 10 GB to spare, else the first
    `blocks` blocks and every non-block tensor, extrapolated like FLUX.1."""
    data = json.loads((ROOT / "manifests" / f"{manifest_name}.json").read_text())
    tensors = {n: (tuple(s), d) for n, (s, d) in data["components"]["diffusion_model"]["tensors"].items()}
    full = sum(math.prod(s) for s, _ in tensors.values())
    need = full * 2 * 1.35 / 1e9 + 10  # the bf16 file, its ~0.32x Q4_K_M output, 10 GB to spare
    free = shutil.disk_usage(workdir).free / 1e9
    note, partial = f"{free:.0f} GB free on the work disk: the whole model", None
    if free < need:
        keep_re = re.compile(rf"^{re.escape(block_prefix)}(\d+)\.")
        partial = tensors
        tensors = {n: v for n, v in tensors.items() if not (m := keep_re.match(n)) or int(m.group(1)) < blocks}
        note = (f"only {free:.0f} GB free on the work disk (< {need:.0f}): the first {blocks} blocks plus every "
                f"non-block tensor; times extrapolated by quantized parameters")
    print(f"{key}: {note}", flush=True)
    return run_file(results, key, f"{title}, bf16 ({len(tensors)} tensors)", workdir / f"{manifest_name}.safetensors",
                    tensors, keep, 1.0, note, partial, family)


MANIFEST_PARTS = {  # --parts name -> (manifest, family, numbered block prefix, title)
    "qwen_image": ("qwen_image", "qwen_image", "transformer_blocks.", "Qwen-Image transformer"),
    "wan": ("wan2_1_t2v_14b", "wan", "blocks.", "Wan 2.2 T2V A14B expert (= Wan 2.1 T2V 14B) transformer"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="kernels,sdxl,flux")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "quantize")
    ap.add_argument("--repeat", type=int, default=2, help="best of N for the 4096x4096 tensor")
    ap.add_argument("--min-free-gb", type=float, default=60.0)
    ap.add_argument("--flux-blocks", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the big files")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine()}
    sections = []
    if "kernels" in parts:
        sections.append(part_kernels(results, args.repeat))
    lines = []
    if "sdxl" in parts:
        lines.append(part_sdxl(results, args.workdir, args.keep))
    if "flux" in parts:
        lines.append(part_flux(results, args.workdir, args.keep, args.min_free_gb, args.flux_blocks))
    for key, (manifest_name, family, block_prefix, title) in MANIFEST_PARTS.items():
        if key in parts:
            lines.append(part_manifest(results, args.workdir, args.keep, args.flux_blocks, key, manifest_name, family,
                                       block_prefix, title))
    if lines:
        sections.append("\n".join([FILE_HEADER, *lines]))
    results["machine"]["load_after"] = os.getloadavg()[0]
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    print(f"\n# {m['date']}: {m['cpus']} CPUs, {m['ram_gib']} GiB RAM, {m['arch']}, Linux {m['kernel']}, Python "
          f"{m['python']}, torch {m['torch']}, numpy {m['numpy']}; load average {m['load_before']:.1f} before, "
          f"{m['load_after']:.1f} after\n")
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
