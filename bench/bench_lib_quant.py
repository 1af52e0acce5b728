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
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
HEADING = "## Library backends: `ckptkit quantize --to quanto|bnb|comfy` vs the libraries' own route"
WRAPPER = """\
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[2:]).returncode
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": rc, "wall_s": wall, "peak_rss": ru.ru_maxrss * 1024, "cpu_s": ru.ru_utime + ru.ru_stime}, fh)
"""

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
QUANT_SUFFIXES = ("._data", "._scale", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB")


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


def measure(cmd: list[str], log: Path) -> dict:
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", WRAPPER, str(result), *cmd], cwd=ROOT, env=env, stdout=fh,
                       stderr=subprocess.STDOUT)
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


def compare(ours: dict, lib: dict) -> str:
    common = set(ours) & set(lib)
    quant = {n for n in common if n.endswith(QUANT_SUFFIXES) or ".quant_state." in n
             or lib[n][0] in ("I8", "U8", "F8_E4M3") or ours[n][0] in ("I8", "U8", "F8_E4M3")}
    same = {n for n in common if ours[n][:3] == lib[n][:3]}
    padded = {n for n in common - same if ours[n][3] and ours[n][3] == lib[n][3]}  # the same quant_state JSON
    text = f"quantized tensors: {len(quant & same)}/{len(quant)} byte-identical"
    if quant & padded:
        text += f" (+{len(quant & padded)} quant_state JSON equal but for ckptkit's space padding)"
    rest = common - quant
    text += f"; other tensors: {len(rest & same)}/{len(rest)} identical"
    for label, names in (("only in ours", set(ours) - set(lib)), ("only in the library's", set(lib) - set(ours))):
        if names:
            text += f"; {len(names)} names {label} (e.g. {', '.join(sorted(names)[:2])})"
    differ = sorted(common - same - padded)
    if differ:
        text += f"; DIFFER: {', '.join(f'{n} {ours[n][:2]} vs {lib[n][:2]}' for n in differ[:3])}"
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
            if small:
                warm(src)
            r = measure(command(who, backend, type_name, part, src, outs[who]), workdir / f"{part}.{backend}-{type_name}.{who}.log")
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
    return "-" if v is None else f"{v:.1f} s" if unit == "s" else f"{v / GB:.2f} GB"


def render(results: dict, args) -> str:
    m = results["machine"]
    lines = [HEADING, "",
             f"Command: `python bench/bench_lib_quant.py --runs {args.runs}"
             + (f" --parts {args.parts}" if args.parts != DEFAULT_PARTS else "") + " --write-doc` (from the "
             "repository root; it builds its inputs in bench/out/lib_quant on first use). "
             f"Date {m['date']}.", "",
             f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python "
             f"{m['python']}, torch {m['torch']}, transformers {m['transformers']}, optimum-quanto {m['quanto']}, "
             f"bitsandbytes {m['bnb']}. Shared with another engineer's tests: 1-minute load average "
             f"{results['load_before']:.1f} at the start, {results['load_after']:.1f} at the end.", "",
             "Inputs: standalone component files, real names and shapes from ../shared/manifests/, random N(0, 0.02) "
             "bf16 weights: " + "; ".join(f"{p} {f['params'] / 1e9:.3f}B params, {f['bytes'] / GB:.2f} GB ({f['source']})"
                                          for p, f in results["files"].items()) + ".", "",
             f"Each route is its own process, {args.runs} run(s) per (component, target), alternating which goes "
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
                     f"{fmt(median(o, 'peak_rss'), 'b')} | {lib_note or fmt(median(t, 'peak_rss'), 'b')} | "
                     f"{fmt_ratio(pair_ratios(r, 'peak_rss', False))} | {fmt(r['bytes'].get('ours'), 'b')} | "
                     f"{fmt(r['bytes'].get('library'), 'b')} |")
    lines += ["", "Same tensors? (first pair's outputs, raw bytes per tensor; `text_model.` prefix normalised):", ""]
    for r in results["rows"]:
        if r["same"]:
            lines.append(f"- {r['part']} {r['backend']} {r['type']}: {r['same']}")
    lines += list(dict.fromkeys(f"- FAILED: {r['part']} {r['backend']} {r['type']} {who}: `{x['error']}`"
                                for r in results["rows"] for who, rs in r["runs"].items() for x in rs if x["rc"]))
    lines += ["", "Routes (IN the input file):", ""]
    for cmd in dict.fromkeys(f"{who}: `{c}`" for r in results["rows"] for who, c in r["commands"].items()):
        lines.append(f"- {cmd}")
    lines += ["- comfy: no library route; ComfyUI has no packaged save route for its mixed-precision files "
              "(ckptkit's writer is checked byte for byte against an independent implementation of comfy_kitchen's "
              "quantizer in tests/quant/test_comfy_writer.py)."]
    lines += [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import bitsandbytes
    import optimum.quanto
    import torch
    import transformers

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "ram_gib": round(mem_total() / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "quanto": getattr(optimum.quanto, "__version__", "?"),
            "bnb": bitsandbytes.__version__, "date": time.strftime("%Y-%m-%d")}


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
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_clients import manifest_specs

    params = sum(math.prod(s) for _, s, _ in manifest_specs("flux1_dev", ["transformer"]))
    need = params * 2 + params * 1.05 + 2 * GB  # the bf16 input, one qint8 output, 2 GB to spare
    t5 = workdir / "t5xxl.safetensors"
    if shutil.disk_usage(workdir).free < need and t5.exists():
        print(f"flux: dropping the cached {t5.name} to make room", flush=True)
        t5.unlink()
    free = shutil.disk_usage(workdir).free
    bf16 = params * 2
    notes.append(f"FLUX.1 library route not run: the transformer is {params / 1e9:.2f}B parameters = "
                 f"{bf16 / GB:.1f} GB ({bf16 / 2**30:.1f} GiB) in bf16, and quanto's quantize/freeze (or diffusers' "
                 "from_pretrained with a QuantoConfig) works on the whole model in memory: the bf16 model, the "
                 f"interpreter and torch (~0.6 GB) and the int8 weights as they are made, >= {(bf16 + 0.6 * GB) / GB:.1f} GB, "
                 f"against {mem_total() / GB:.1f} GB ({mem_total() / 2**30:.1f} GiB) of RAM here, "
                 f"{mem_available() / GB:.1f} GB available when checked.")
    if free < need:
        notes.append(f"FLUX.1 skipped: {free / GB:.1f} GB free on disk, {need / GB:.1f} GB needed "
                     "(the bf16 input and one qint8 output).")
        return False
    return True


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
    results = {"machine": machine(), "load_before": os.getloadavg()[0], "files": {}, "rows": [], "notes": []}
    for part in args.parts.split(","):
        flux = part == "flux"
        if flux and not flux_room(args.workdir, results["notes"]):
            continue
        src, results["files"][part] = build(part, args.workdir)
        print(f"{part}: {src} ({results['files'][part]['bytes'] / GB:.2f} GB)", flush=True)
        try:
            for backend, type_name in FLUX_TARGETS if flux else TARGETS:
                results["rows"].append(run_pairs(part, src, backend, type_name, args.runs, args.workdir, flux))
        finally:
            if flux:
                src.unlink(missing_ok=True)  # 24 GB: not kept
    results["load_after"] = os.getloadavg()[0]
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2))
    section = render(results, args)
    print("\n" + section)
    if args.write_doc:
        sys.path.insert(0, str(ROOT / "bench"))
        from benchdoc import write_section

        write_section(HEADING, section)
        print("wrote docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
