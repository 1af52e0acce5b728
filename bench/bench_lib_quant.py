"""`ckptkit quantize --to quanto|bnb|comfy` against the libraries' own route, on real-shape text
encoders (and the FLUX.1 transformer, ckptkit only) with random N(0, 0.02) bf16 weights.

Inputs (built once from ../shared/manifests/ and kept in --workdir, default bench/out/lib_quant,
git-ignored), each a standalone component file in transformers names, as `ckptkit inspect` detects:

  clip_l   CLIP-L text encoder            clip_l.json               123M params, 0.25 GB
  clip_g   OpenCLIP bigG text encoder     sd3_medium.json clip_g    695M params, 1.39 GB
  t5xxl    T5-XXL encoder                 t5xxl.json                4.76B params, 9.52 GB
  flux     FLUX.1-dev transformer (BFL)   flux1_dev.json            11.9B params, 23.8 GB (ours only;
           written, measured and deleted: no room to keep it; the cached T5 input is dropped first
           when the disk is short)

Routes, each its own process, --runs times per (component, target), alternating which goes first:

  ours     ckptkit quantize IN -o OUT.safetensors --to quanto|bnb|comfy --type qint8|nf4|int8|fp8_e4m3
  library  quanto: the transformers model class built from the config on the meta device, the bf16
           weights loaded (safetensors.torch.load_file + load_state_dict(assign=True)),
           optimum.quanto.quantize(model, weights=qint8), freeze(model), safetensors.torch.save_model
           (save_file of model.state_dict() with T5's tied embedding copy dropped);
           bnb: transformers from_pretrained(folder with config.json + the input as model.safetensors,
           dtype=bfloat16, quantization_config=BitsAndBytesConfig(load_in_4bit / load_in_8bit)) +
           save_pretrained; comfy: none (ComfyUI has no packaged save route)

Wall time and peak RSS (getrusage(RUSAGE_CHILDREN).ru_maxrss of a wrapper that only runs the route,
as in bench_verify.py); inputs that fit in half the RAM are read once before every run (warm page
cache). The first pair's outputs are compared tensor by tensor (raw bytes; names with
CLIPTextModel's dropped `text_model.` prefix put back).

    python bench/bench_lib_quant.py [--runs 2] [--parts clip_l,clip_g,t5xxl,flux] [--write-doc]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import mmap
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from benchdoc import WRAPPER, publish  # noqa: E402

GB = 1e9
MIN_FREE = 3e9  # a FLUX run is stopped when the shared disk gets this full
HEADING = "## Library backends: `ckptkit quantize --to quanto|bnb|comfy` vs the libraries' own route"

# part: (manifest, components, transformers class, config class, config)
PARTS = {
    "clip_l": ("clip_l", None, "CLIPTextModel", "CLIPTextConfig",
               dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                    hidden_act="quick_gelu", projection_dim=768)),
    "clip_g": ("sd3_medium", ["clip_g"], "CLIPTextModelWithProjection", "CLIPTextConfig",
               dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                    hidden_act="gelu", projection_dim=1280)),
    "t5xxl": ("t5xxl", None, "T5EncoderModel", "T5Config",
              dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)),
    "flux": ("flux1_dev", ["transformer"], None, None, None),
}
TARGETS = [("quanto", "qint8"), ("bnb", "nf4"), ("bnb", "int8"), ("comfy", "fp8_e4m3")]
FLUX_TARGETS = [("quanto", "qint8")]
LAYER_MARKS = (".weight._data", ".weight.absmax", ".SCB")


# --- the library's own route (run in a fresh process: `bench_lib_quant.py lib BACKEND TYPE PART SRC OUT`)

def lib_route(backend: str, type_name: str, part: str, src: str, out: str) -> None:
    import torch
    import transformers

    _, _, cls_name, cfg_name, cfg = PARTS[part]
    cls, config = getattr(transformers, cls_name), getattr(transformers, cfg_name)(**cfg)
    if backend == "quanto":
        import optimum.quanto as quanto
        from safetensors.torch import load_file, save_model

        with torch.device("meta"):
            model = cls(config)
        keys = set(model.state_dict())  # this CLIPTextModel holds its tensors without `text_model.`
        state = {k if k in keys else k.removeprefix("text_model."): v for k, v in load_file(src).items()}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        model.tie_weights()
        assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}, (missing, unexpected)
        del state
        quanto.quantize(model, weights={"qint8": quanto.qint8, "qfloat8": quanto.qfloat8}[type_name])
        quanto.freeze(model)
        save_model(model, out)  # save_file(model.state_dict()) less tied duplicates (T5's embedding)
    else:
        folder = Path(out + ".src")
        folder.mkdir(exist_ok=True)
        config.save_pretrained(folder)
        (folder / "model.safetensors").unlink(missing_ok=True)
        (folder / "model.safetensors").symlink_to(Path(src).resolve())
        q = (transformers.BitsAndBytesConfig(load_in_8bit=True) if type_name == "int8" else
             transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=type_name,
                                             bnb_4bit_compute_dtype=torch.bfloat16))
        model = cls.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=q)
        model.save_pretrained(out)


# --- measuring ---------------------------------------------------------------------------------------

def command(who: str, backend: str, type_name: str, part: str, src: Path, out: Path) -> list[str]:
    if who == "ours":
        return [sys.executable, "-m", "ckptkit.cli", "quantize", str(src), "-o", str(out), "--to", backend,
                "--type", type_name]
    return [sys.executable, str(Path(__file__).resolve()), "lib", backend, type_name, part, str(src), str(out)]


def shown(who: str, backend: str, type_name: str, cls: str | None) -> str:
    if who == "ours":
        return f"ckptkit quantize IN -o OUT.safetensors --to {backend} --type {type_name}"
    if backend == "quanto":
        return (f"{cls} on meta + load_state_dict(load_file(IN), assign=True); quanto.quantize(model, "
                f"weights={type_name}); freeze(model); save_model(model, OUT)")
    flag = "load_in_8bit=True" if type_name == "int8" else f"load_in_4bit=True, bnb_4bit_quant_type='{type_name}'"
    return f"{cls}.from_pretrained(DIR, dtype=bfloat16, quantization_config=BitsAndBytesConfig({flag})); save_pretrained(OUT)"


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(64 << 20)
        while fh.readinto(buf):
            pass


def measure(cmd: list[str], log: Path, min_free: float = 0) -> dict:
    """One run under the wrapper; stopped (its process group) if the disk's free space falls under min_free."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(result), *cmd], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(1)
            if min_free and shutil.disk_usage(log.parent).free < min_free:
                os.killpg(proc.pid, 9)  # the group this run started, nothing else
                proc.wait()
                return {"rc": "stopped", "wall_s": 0, "cpu_s": 0, "peak_rss": 0,
                        "error": f"stopped: under {min_free / GB:.0f} GB free on the (shared) disk"}
    r = json.loads(result.read_text())
    if r["rc"] != 0:
        r["error"] = ([ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] or ["?"])[-1][:300]
    return r


def safetensors_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) if path.is_dir() else [path]


def digests(path: Path) -> dict[str, tuple[str, tuple, str, bytes]]:
    """name -> (dtype, shape, sha256 of the raw bytes, the bytes themselves when they are a bnb quant_state JSON)."""
    out = {}
    for f in safetensors_files(path):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header, base = json.loads(fh.read(n)), 8 + n
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                for name, v in header.items():
                    if name != "__metadata__":
                        raw = mm[base + v["data_offsets"][0]: base + v["data_offsets"][1]]
                        js = raw.rstrip(b" ") if ".quant_state." in name else b""
                        out[name.removeprefix("text_model.")] = (v["dtype"], tuple(v["shape"]),
                                                                  hashlib.sha256(raw).hexdigest(), js)
    return out


def quantized_layers(d: dict) -> set[str]:
    """The layers L a file holds quantized: L.weight._data (quanto), L.weight.absmax (bnb 4-bit), L.SCB (bnb int8)."""
    return {n[: -len(suf)] for n in d for suf in LAYER_MARKS if n.endswith(suf)}


def layer_of(name: str, layers: set[str]) -> str | None:
    parts = name.split(".")
    return next((p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in layers), None)


def grouped(layers: set[str]) -> str:
    counts = Counter(re.sub(r"\.\d+\.", ".N.", L) for L in layers)
    return ", ".join(f"{c} x {L}" if c > 1 else L for L, c in sorted(counts.items())) or "none"


def compare(ours: dict, lib: dict) -> str:
    lo, ll = quantized_layers(ours), quantized_layers(lib)
    both = lo & ll
    in_both = [{n for n in d if layer_of(n, both)} for d in (ours, lib)]
    common = in_both[0] & in_both[1]
    same = {n for n in common if ours[n][:3] == lib[n][:3]}
    padded = {n for n in common - same if ours[n][3] and ours[n][3] == lib[n][3]}  # the same quant_state JSON
    text = f"{len(both)} layers quantized by both: {len(same)}/{len(common)} of their tensors byte-identical"
    if padded:
        text += f" (+{len(padded)} quant_state JSON equal but for ckptkit's space padding)"
    if in_both[0] != in_both[1]:
        text += f", names differ ({len(in_both[0] ^ in_both[1])})"
    text += f"; quantized by ckptkit only: {grouped(lo - ll)}; by the library only: {grouped(ll - lo)}"
    rest = [{n for n in d if not layer_of(n, lo | ll)} for d in (ours, lib)]
    others = rest[0] & rest[1]
    text += f"; other tensors: {len([n for n in others if ours[n][:3] == lib[n][:3]])}/{len(others)} identical"
    for label, names in (("only in ckptkit's file", rest[0] - rest[1]), ("only in the library's", rest[1] - rest[0])):
        if names:
            text += f", {label}: {', '.join(sorted(names)[:3])}"
    return text


def out_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in safetensors_files(path))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    shutil.rmtree(Path(str(path) + ".src"), ignore_errors=True)


def run_pairs(part: str, src: Path, backend: str, type_name: str, runs: int, workdir: Path, ours_only: bool) -> dict:
    cls = PARTS[part][2]
    whos = ["ours"] if ours_only or backend == "comfy" else ["ours", "library"]
    outs = {"ours": workdir / f"{part}.{backend}-{type_name}.ours.safetensors",
            "library": workdir / (f"{part}.{backend}-{type_name}.library" + ("" if backend == "bnb" else ".safetensors"))}
    row = {"part": part, "backend": backend, "type": type_name, "runs": {w: [] for w in whos},
           "commands": {w: shown(w, backend, type_name, cls) for w in whos}, "bytes": {}, "same": None}
    small = src.stat().st_size < 0.5 * mem_total()
    dig = {}
    for i in range(runs):
        for who in (whos if i % 2 == 0 else whos[::-1]):
            remove(outs[who])
            if who == "library" and mem_available() < 1.6 * src.stat().st_size + GB:
                row["runs"][who].append({"rc": "skipped", "wall_s": 0, "cpu_s": 0, "peak_rss": 0,
                                         "error": f"not run: {mem_available() / GB:.1f} GB of memory available"})
                continue
            if small:
                warm(src)
            r = measure(command(who, backend, type_name, part, src, outs[who]),
                        workdir / f"{part}.{backend}-{type_name}.{who}.log", MIN_FREE if ours_only else 0)
            row["runs"][who].append(r)
            print(f"  {part} {backend} {type_name} {who} run {i + 1}: rc {r['rc']}, {r['wall_s']:.1f} s wall, "
                  f"{r['cpu_s']:.1f} s CPU, peak RSS {r['peak_rss'] / GB:.2f} GB" + (f"  ERROR: {r['error']}" if r["rc"] else ""),
                  flush=True)
            if r["rc"] == 0 and who not in row["bytes"]:
                row["bytes"][who] = out_bytes(outs[who])
                if len(whos) == 2:
                    dig[who] = digests(outs[who])
            remove(outs[who])  # one output on disk at a time
    if len(dig) == 2:
        row["same"] = compare(dig["ours"], dig["library"])
        print(f"  {part} {backend} {type_name}: {row['same']}", flush=True)
    return row


def revision() -> str:
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--", "ckptkit") else "")


def mem_total() -> int:
    return int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024


def mem_available() -> int:
    return int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024


# --- reporting ---------------------------------------------------------------------------------------

def median(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r["rc"] == 0]
    return statistics.median(vals) if vals else None


def pair_ratios(row: dict, key: str, lib_over_ours: bool) -> list[float]:
    if "library" not in row["runs"]:
        return []
    pairs = [(o[key], t[key]) for o, t in zip(row["runs"]["ours"], row["runs"]["library"]) if o["rc"] == 0 == t["rc"]]
    return [t / o if lib_over_ours else o / t for o, t in pairs]


def fmt_ratio(vals: list[float]) -> str:
    return "-" if not vals else f"{statistics.median(vals):.2f}x (" + ", ".join(f"{v:.2f}" for v in vals) + ")"


def fmt(v, unit: str) -> str:
    return "-" if v is None else f"{v:.1f} s" if unit == "s" else f"{v / GB:.2f} GB" if unit == "GB" else f"{v / 1e6:,.1f} MB"


def render(results: dict, args) -> str:
    m = results["machine"]
    lines = [HEADING, "",
             f"Command: `python bench/bench_lib_quant.py --runs {args.runs}"
             + (f" --parts {args.parts}" if args.parts != DEFAULT_PARTS else "") + " --write-doc` (from the "
             "repository root; it builds its inputs in bench/out/lib_quant on first use). "
             f"Date {m['date']}, ckptkit at {results['rev'][0]}"
             + (f" (at the end: {results['rev'][1]}; the tree changed during the run)" if len(set(results["rev"])) > 1 else "")
             + ".", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python "
             f"{m['python']}, torch {m['torch']}, transformers {m['transformers']}, optimum-quanto {m['quanto']}, "
             f"bitsandbytes {m['bnb']}. Shared with another engineer's tests: 1-minute load average "
             f"{results['load_before']:.1f} at the start, {results['load_after']:.1f} at the end.", "",
             "Inputs: standalone component files, real names and shapes from ../shared/manifests/, random N(0, 0.02) "
             "bf16 weights: " + "; ".join(f"{p} {f['params'] / 1e9:.3f}B params, {f['bytes'] / GB:.2f} GB ({f['source']})"
                                          for p, f in results["files"].items()) + ".", "",
             f"Each route is its own process, {args.runs} run{'s' * (args.runs > 1)} per (component, target), alternating which goes "
             "first; medians, and the ratio of each pair (median, then every pair). Time ratio: library / ckptkit "
             "(> 1: ckptkit faster). RSS ratio: ckptkit / library. Peak RSS: `getrusage(RUSAGE_CHILDREN).ru_maxrss` "
             "of a wrapper that only runs the route (mapped file pages count). Inputs under half the RAM are read "
             "before every run (warm page cache). Sizes: the output safetensors file(s).", "",
             "| component | --to / --type | ckptkit wall | library wall | time ratio | ckptkit peak RSS | "
             "library peak RSS | RSS ratio | ckptkit file | library file |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        o, t = r["runs"]["ours"], r["runs"].get("library", [])
        lib_note = "-" if not t else None  # no library route run
        lines.append(f"| {r['part']} | {r['backend']} {r['type']} | {fmt(median(o, 'wall_s'), 's')} | "
                     f"{lib_note or fmt(median(t, 'wall_s'), 's')} | {fmt_ratio(pair_ratios(r, 'wall_s', True))} | "
                     f"{fmt(median(o, 'peak_rss'), 'GB')} | {lib_note or fmt(median(t, 'peak_rss'), 'GB')} | "
                     f"{fmt_ratio(pair_ratios(r, 'peak_rss', False))} | {fmt(r['bytes'].get('ours'), 'MB')} | "
                     f"{fmt(r['bytes'].get('library'), 'MB')} |")
    lines += ["", "Same tensors? (first pair's outputs, raw bytes per tensor; `text_model.` prefix normalised):", ""]
    for r in results["rows"]:
        if r["same"]:
            lines.append(f"- {r['part']} {r['backend']} {r['type']}: {r['same']}")
    lines += list(dict.fromkeys(f"- FAILED: {r['part']} {r['backend']} {r['type']} {who}: `{x['error']}`"
                                for r in results["rows"] for who, rs in r["runs"].items() for x in rs if x["rc"]))
    lines += ["", "Routes (IN the input file):", ""]
    for cmd in dict.fromkeys(f"{who}: `{c}`" for r in results["rows"] for who, c in r["commands"].items()):
        lines.append(f"- {cmd}")
    lines += ["- comfy: no library route measured (neither ComfyUI nor comfy_kitchen is installed here); ckptkit's "
              "writer is checked byte for byte against an independent implementation of comfy_kitchen's quantizer "
              "in tests/quant/test_comfy_writer.py."]
    lines += [f"- {note}" for note in results["notes"]]
    if "flux" in args.parts.split(","):
        lines.append(f"- {flux_memory_note(results)}")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    from importlib.metadata import version

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_total() / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "torch": version("torch"),
            "transformers": version("transformers"), "quanto": version("optimum-quanto"),
            "bnb": version("bitsandbytes"), "date": time.strftime("%Y-%m-%d")}


# --- main --------------------------------------------------------------------------------------------

DEFAULT_PARTS = "clip_l,clip_g,t5xxl,flux"


def build(part: str, workdir: Path) -> tuple[Path, dict]:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_clients import manifest_specs, write_file

    manifest, comps = PARTS[part][:2]
    specs = manifest_specs(manifest, comps, with_prefix=False)
    path = workdir / f"{part}.safetensors"
    if not path.exists():
        print(f"{part}: writing {path}", flush=True)
        tmp = path.with_suffix(".tmp")
        write_file(tmp, specs, "BF16")
        tmp.rename(path)
    source = f"{manifest}.json" + (f" {comps[0]}" if comps else "")
    return path, {"params": sum(math.prod(s) for _, s, _ in specs), "bytes": path.stat().st_size, "source": source}


def flux_room(workdir: Path, notes: list) -> bool:
    """Room for the bf16 input and one qint8 output, with 6 GB to spare on a disk others write to too;
    the cached T5 input (rebuilt on the next run) is dropped when that makes the room."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_clients import manifest_specs

    params = sum(math.prod(s) for _, s, _ in manifest_specs("flux1_dev", ["transformer"]))
    need = params * 2 + params * 1.05 + 6 * GB
    t5 = workdir / "t5xxl.safetensors"
    free = shutil.disk_usage(workdir).free
    if free < need and t5.exists() and free + t5.stat().st_size >= need:
        print(f"flux: dropping the cached {t5.name} to make room", flush=True)
        t5.unlink()
        free = shutil.disk_usage(workdir).free
    if free < need:
        notes.append(f"FLUX.1 skipped: {free / GB:.1f} GB free on the disk, {need / GB:.1f} GB wanted "
                     "(the bf16 input, one qint8 output, 6 GB to spare).")
        return False
    return True


def flux_memory_note(results: dict) -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_clients import manifest_specs

    bf16 = 2 * sum(math.prod(s) for _, s, _ in manifest_specs("flux1_dev", ["transformer"]))
    text = (f"FLUX.1 library route not run: quanto's quantize + freeze (as diffusers' from_pretrained with a "
            f"QuantoConfig) works on the whole model in memory, and its bf16 weights alone are {bf16 / GB:.1f} GB "
            f"({bf16 / 2**30:.1f} GiB); this machine has {mem_total() / GB:.1f} GB ({mem_total() / 2**30:.1f} GiB) "
            f"of RAM, {results['mem_available'] / GB:.1f} GB available at the start")
    t5 = next((r for r in results["rows"] if (r["part"], r["backend"]) == ("t5xxl", "quanto")), None)
    peak = t5 and median(t5["runs"].get("library", []), "peak_rss")
    if peak:
        size = results["files"]["t5xxl"]["bytes"]
        ratio = peak / size
        text += (f". On T5-XXL above the same route peaked at {peak / GB:.1f} GB, {ratio:.2f}x its bf16 input (the "
                 f"input's {size / GB:.1f} GB mapped from the file, plus {(peak - size) / GB:.1f} GB: the int8 copy "
                 f"and the interpreter); at that ratio FLUX.1 needs about {ratio * bf16 / GB:.0f} GB, more than the "
                 "RAM. The mapped part is page cache the kernel can drop and read again, so such a run would thrash "
                 "rather than surely fail; a model held in anonymous memory (built, then loaded) needs the "
                 f"{bf16 / GB:.1f} GB plus the interpreter with nothing to drop")
    return text + "."


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "lib":
        return lib_route(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--parts", default=DEFAULT_PARTS)
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "lib_quant")
    ap.add_argument("--write-doc", action="store_true", help="replace this benchmark's section in docs/BENCHMARKS.md")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "rev": [revision()], "load_before": os.getloadavg()[0], "mem_available": mem_available(), "files": {}, "rows": [], "notes": []}
    for part in args.parts.split(","):
        flux = part == "flux"
        if flux and not flux_room(args.workdir, results["notes"]):
            continue
        src, results["files"][part] = build(part, args.workdir)
        print(f"{part}: {src} ({results['files'][part]['bytes'] / GB:.2f} GB)", flush=True)
        try:
            for backend, type_name in FLUX_TARGETS if flux else TARGETS:
                results["rows"].append(run_pairs(part, src, backend, type_name, args.runs, args.workdir, flux))
                (args.workdir / "results.json").write_text(json.dumps(results, indent=2))  # so far
        finally:
            if flux:
                src.unlink(missing_ok=True)  # 24 GB: not kept
    results["load_after"] = os.getloadavg()[0]
    results["rev"].append(revision())
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    publish(HEADING, render(results, args), args.write_doc)


if __name__ == "__main__":
    main()
