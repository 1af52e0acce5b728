"""Quantizing for stable-diffusion.cpp: `ckptkit quantize --client sdcpp` against sd.cpp's own convert
(`sd -M convert`: stable-diffusion-cpp-python 0.4.7's `convert`, the same C++ code, built from the
registry's sdist by tests/quant/sdcpp_reference.py), on real-shape files with random weights:

  sdxl  the SDXL base bundle (UNet, CLIP-L, OpenCLIP bigG, VAE; fp16, 6.9 GB) to one GGUF bundle:
        the UNet and both text encoders at the type, the VAE as stored. sd.cpp is given
        `--type f16` and rules naming the UNet and the text encoders (with `--type q8_0` and a rule
        keeping the VAE f16, its convert under-sizes its tensor pool and aborts).
  flux  the FLUX.1-dev transformer (bf16, BFL names, 23.8 GB) as one component file; where the disk
        cannot hold it and one output (or with --flux-blocks N), only its first N double and single
        blocks are written (every tensor has its real shape; the share is printed).

Each (file, type) runs --pairs times per tool, alternating which goes first, each as a process under
`/usr/bin/time -v` (wall time, CPU time, peak RSS); the outputs of the first pair are compared
tensor by tensor (names, types, bytes). Reported: medians and sd.cpp/ours ratios (time: > 1 means
ckptkit is faster; peak RSS: ours/sd.cpp).

    python bench/bench_clients.py [--parts sdxl,flux] [--types q8_0,q4_K] [--pairs 3] [--write-doc]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MANIFESTS = ROOT.parent / "shared" / "manifests"

from tests.quant import sdcpp_reference as ref  # noqa: E402

OURS = {"q8_0": "q8_0", "q4_K": "q4_k_s"}  # sd.cpp's type name -> ckptkit's request for the same type
SD_TYPE = {"q8_0": "Q8_0", "q4_K": "Q4_K"}


def manifest_specs(name: str, components: list[str] | None = None, with_prefix: bool = True) -> list[tuple]:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    out = []
    for comp, part in data["components"].items():
        if components is None or comp in components:
            prefix = part.get("prefix", "") if with_prefix else ""
            out += [(prefix + k, tuple(v[0]), v[1]) for k, v in part["tensors"].items()]
    return out


def write_file(path: Path, specs: list[tuple], dtype: str) -> int:
    from ckptkit.formats.safetensors import SafetensorsWriter

    torch_dtype = {"F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    with SafetensorsWriter(path, [(n, dtype, s) for n, s, _ in specs]) as writer:
        for i, (name, shape, _) in enumerate(specs):
            t = torch.empty(shape, dtype=torch_dtype)
            writer.write(name, t.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(i)))
    return path.stat().st_size


def timed(cmd: list[str]) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    err = proc.stderr
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", err).group(1)
    return {"wall_s": sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":")))),
            "cpu_s": sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", err).group(1)) for k in ("User", "System")),
            "peak_rss": int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) * 1024}


def ours_cmd(src: Path, out: Path, sd_type: str, text_encoders: list[str]) -> list[str]:
    t = OURS[sd_type]
    extra = [a for c in text_encoders for a in ("--component", f"{c}={t}")]
    return [sys.executable, "-m", "ckptkit.cli", "quantize", str(src), "-o", str(out), "--client", "sdcpp",
            "--type", t, *extra, "--force"]


def sdcpp_cmd(src: Path, out: Path, sd_type: str, rules: str) -> list[str]:
    code = ("import sys; from tests.quant import sdcpp_reference as r; "
            "r.converter()(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])")
    return [sys.executable, "-c", code, str(src), str(out), sd_type, rules]


def tensor_digests(path: Path) -> dict[str, tuple[str, tuple, str]]:
    from ckptkit.formats.gguf import GGUFCheckpoint

    with GGUFCheckpoint(path) as ck:
        return {r.name: (r.type.name, tuple(r.shape), hashlib.sha256(ck.raw(r.name)).hexdigest()) for r in ck.layout}


def compare(a: dict, b: dict) -> str:
    if a == b:
        return f"identical ({len(a)} tensors)"
    only = sorted(set(a) ^ set(b))
    differ = [n for n in set(a) & set(b) if a[n] != b[n]]
    return f"DIFFER: {len(only)} names not in both ({only[:3]}), {len(differ)} tensors differ ({differ[:3]})"


def run_pairs(label: str, src: Path, sd_type: str, text_encoders: list[str], rules: str, sd_type_arg: str,
              pairs: int, workdir: Path) -> dict:
    ours_out, their_out = workdir / "ours.gguf", workdir / "theirs.gguf"
    runs: dict[str, list[dict]] = {"ours": [], "sdcpp": []}
    digests: dict[str, dict] = {}
    size = 0
    for i in range(pairs):
        order = ["ours", "sdcpp"] if i % 2 == 0 else ["sdcpp", "ours"]
        for who in order:
            out = ours_out if who == "ours" else their_out
            cmd = (ours_cmd(src, out, sd_type, text_encoders) if who == "ours" else
                   sdcpp_cmd(src, out, sd_type_arg, rules))
            r = timed(cmd)
            runs[who].append(r)
            print(f"  {label} {sd_type} {who}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                  f"{r['peak_rss'] / 2**30:.2f} GiB", flush=True)
            if i == 0:  # one output on disk at a time: a whole FLUX and two GGUFs of it need not fit
                digests[who] = tensor_digests(out)
                size = out.stat().st_size if who == "ours" else size
            out.unlink(missing_ok=True)
    same = compare(digests["ours"], digests["sdcpp"])
    print(f"  {label} {sd_type}: {same}", flush=True)
    med = {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for who, rs in runs.items()}
    return {"label": label, "type": sd_type, "runs": runs, "median": med, "bytes": same, "out_bytes": size,
            "commands": {"ours": " ".join(["ckptkit", *ours_cmd(Path("SRC"), Path("OUT.gguf"), sd_type, text_encoders)[3:-1]]),
                         "sdcpp": f"sd -M convert -m SRC -o OUT.gguf --type {sd_type_arg.lower()}"
                                  + (f" --tensor-type-rules '{rules}'" if rules else "")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="sdxl,flux")
    ap.add_argument("--types", default="q8_0,q4_K")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "clients")
    ap.add_argument("--flux-blocks", type=int, default=0,
                    help="write only the first N double and single blocks (default: the whole transformer "
                         "when the disk holds it and one output, else 4)")
    ap.add_argument("--write-doc", action="store_true", help="replace the section in docs/BENCHMARKS.md")
    args = ap.parse_args()
    ref.build()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
               "files": {}, "rows": []}
    for part in args.parts.split(","):
        if part == "sdxl":
            specs = manifest_specs("sdxl_base")
            src, dtype, tes = args.workdir / "sdxl_base.safetensors", "F16", ["clip_l", "clip_g"]
            rules = {t: rf"^model\.diffusion_model\.={t},^conditioner\.={t}" for t in SD_TYPE}
            sd_types = {t: "F16" for t in SD_TYPE}
            note = "whole bundle"
        else:
            specs = manifest_specs("flux1_dev", ["transformer"], with_prefix=False)
            full = sum(math.prod(s) for _, s, _ in specs)
            note = "whole transformer"
            need = full * 2 * 1.6 + 2e9  # the bf16 source, one Q8_0 output (~0.53x), 2 GB to spare
            if args.flux_blocks or shutil.disk_usage(args.workdir).free < need:
                args.flux_blocks = args.flux_blocks or 4
                block = re.compile(r"^(double|single)_blocks\.(\d+)\.")
                specs = [s for s in specs if not (m := block.match(s[0])) or int(m.group(2)) < args.flux_blocks]
                note = (f"first {args.flux_blocks} double and single blocks and every other tensor: "
                        f"{sum(math.prod(s) for _, s, _ in specs) / full:.0%} of the parameters")
            src, dtype, tes = args.workdir / "flux1_dev.safetensors", "BF16", []
            rules = {t: "" for t in SD_TYPE}
            sd_types = dict(SD_TYPE)
        params = sum(math.prod(s) for _, s, _ in specs)
        print(f"{part}: writing {src.name} ({params / 1e9:.2f}B parameters; {note})", flush=True)
        size = write_file(src, specs, dtype)
        results["files"][part] = {"params": params, "bytes": size, "note": note, "dtype": dtype}
        try:
            for t in args.types.split(","):
                results["rows"].append(run_pairs(part, src, t, tes, rules[t], sd_types[t], args.pairs, args.workdir))
        finally:
            src.unlink(missing_ok=True)
    results["load_after"] = os.getloadavg()[0]
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    section = render(results, args)
    print("\n" + section)
    if args.write_doc:
        sys.path.insert(0, str(ROOT / "bench"))
        from benchdoc import write_section

        write_section(HEADING, section)


HEADING = "## Quantizing for stable-diffusion.cpp: ckptkit vs `sd -M convert`"


def render(results: dict, args) -> str:
    lines = [HEADING, "",
             f"Command: `python bench/bench_clients.py --parts {args.parts} --types {args.types} --pairs {args.pairs}"
             f"{f' --flux-blocks {args.flux_blocks}' if args.flux_blocks else ''}` "
             f"(from the repository root; it builds stable-diffusion-cpp-python 0.4.7 from the registry's sdist on "
             f"first use). Date {results['date']}, {results['cpus']} CPUs (shared; load average "
             f"{results['load_before']:.1f} before, {results['load_after']:.1f} after). Each tool runs as its own "
             f"process under `/usr/bin/time -v`, {args.pairs} times, alternating which goes first; medians. "
             "Time ratio: sd.cpp / ckptkit (> 1: ckptkit faster). RSS ratio: ckptkit / sd.cpp.", ""]
    for part, f in results["files"].items():
        lines.append(f"- {part}: {f['params'] / 1e9:.2f}B parameters, {f['dtype']}, {f['bytes'] / 1e9:.2f} GB ({f['note']})")
    lines += ["", "| file | type | ckptkit wall | sd.cpp wall | time ratio | ckptkit CPU | sd.cpp CPU | ckptkit peak RSS "
              "| sd.cpp peak RSS | RSS ratio | GGUF | tensors |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        o, s = r["median"]["ours"], r["median"]["sdcpp"]
        lines.append(f"| {r['label']} | {r['type']} | {o['wall_s']:.1f} s | {s['wall_s']:.1f} s | "
                     f"{s['wall_s'] / o['wall_s']:.2f}x | {o['cpu_s']:.1f} s | {s['cpu_s']:.1f} s | "
                     f"{o['peak_rss'] / 2**30:.2f} GiB | {s['peak_rss'] / 2**30:.2f} GiB | "
                     f"{o['peak_rss'] / s['peak_rss']:.2f} | {r['out_bytes'] / 1e9:.2f} GB | {r['bytes']} |")
    lines += ["", "Commands compared (SRC the file above):", ""]
    seen = set()
    for r in results["rows"]:
        for who, cmd in r["commands"].items():
            if cmd not in seen:
                seen.add(cmd)
                lines.append(f"- {r['label']} {r['type']}, {'ckptkit' if who == 'ours' else 'sd.cpp'}: `{cmd}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
