"""Planned GGUF sizes of the released models ckptkit has manifests for (manifests/*.json), at Q8_0
and Q4_K_M, next to the published files' sizes where they are public.

For each manifest a sparse real-shape safetensors file is written (the full-size header, the data a
hole: ckptkit/fixtures/sparse.py), and `ckptkit quantize FILE -o X.gguf --type T --dry-run --no-scan
--json` plans it: every tensor's type is decided by its name and shape alone (the NaN/overflow scan
aside), so the planned bytes are the file's tensor bytes exactly (plus a header of a few hundred KB).
Also prints the peak RSS of the planning run.

    python bench/bench_planned_sizes.py [--write]     # --write: replace its section of docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ckptkit.families.manifests import MANIFESTS, all_releases  # noqa: E402
from ckptkit.fixtures.sparse import manifest_tensors, write_sparse_safetensors  # noqa: E402

TYPES = ("q8_0", "q4_k_m")
HEADING = "## Planned GGUF sizes of the newer families' released models"


def plan(path: Path, qtype: str) -> tuple[int, int]:
    """(planned tensor bytes, peak RSS of the planning run)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ckptkit.cli", "quantize", str(path), "-o",
           str(path.with_suffix(f".{qtype}.gguf")), "--type", qtype, "--dry-run", "--no-scan", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"planning failed: {proc.stderr[-2000:]}")
    comps = json.loads(proc.stdout)["plan"]["info"]["components"]
    total = sum(v["bytes"] for c in comps.values() for v in c["policy"]["types"].values())
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    return total, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/BENCHMARKS.md")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, release in all_releases():
            manifest = json.loads((MANIFESTS / f"{release.manifest}.json").read_text())
            path = write_sparse_safetensors(Path(tmp) / f"{release.manifest}.safetensors", manifest_tensors(manifest, ""))
            summary = manifest["summary"][spec.diffusion_model.name]
            planned = {t: plan(path, t) for t in TYPES}
            path.unlink()
            published = "; ".join(f"{k.upper()}: {v}" for k, v in release.published_gguf.items()) or "not checked here"
            rows.append(f"| {release.manifest} ({', '.join(m.split('/', 1)[-1] for m in release.models)}) | "
                        f"{spec.gguf_arch} | {summary['params'] / 1e9:.2f}B | {summary['bytes'] / 1e9:.2f} GB "
                        f"{release.dtype} | {planned['q8_0'][0] / 1e9:.2f} GB | {planned['q4_k_m'][0] / 1e9:.2f} GB | "
                        f"{published} | {max(r for _, r in planned.values()) / 2**20:.0f} MiB |")
            print(rows[-1], flush=True)
    section = "\n".join([
        HEADING, "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python bench/bench_planned_sizes.py --write`: each manifest "
        "(`manifests/*.json`, the real names and shapes of the released diffusion model) as a sparse real-shape "
        "file, planned by `ckptkit quantize FILE -o X.gguf --type T --dry-run --no-scan --json` (ComfyUI-GGUF "
        "profile: its high-precision layers, the _M mix's up-typed attention-v and FFN-down weights). Sizes are "
        "the GGUF tensor bytes (the file adds a header of well under 1 MB); GB = 10^9 bytes.", "",
        "| release | GGUF arch | parameters | source | Q8_0 planned | Q4_K_M planned | published | peak RSS of planning |",
        "|---|---|---:|---:|---:|---:|---|---:|",
        *rows, "",
        "The _M mixes follow ComfyUI-GGUF's patched llama-quantize (branch auto_convert, tools/lcpp.patch, "
        "the tool the published ComfyUI-GGUF files come from): v projections and FFN-down weights to Q6_K at "
        "Q4_K_M, fused qkv to Q5_K (FLUX-style families' single-block linear1/linear2 and `_mlp.2` stay at the "
        "base type), and Qwen-Image's first and last block (`transformer_blocks.0.` / `.59.`) to Q5_K; "
        "ckptkit raises a family's first and last block (`edge_blocks`) whatever the depth. The published "
        "files were written by other tools (orabazes, city96 and QuantStack use ComfyUI-GGUF's; calcuis "
        "uses gguf-connector; leejet uses stable-diffusion.cpp's convert, which quantizes the refiner blocks "
        "and 1-D weights ComfyUI-GGUF keeps), so a few percent either way is the tools' own rules, said "
        "per row where known.", ""])
    print("\n" + section)
    if args.write:
        from bench.benchdoc import write_section

        write_section(HEADING, section)


if __name__ == "__main__":
    main()
