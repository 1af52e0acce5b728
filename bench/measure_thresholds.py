"""What `ckptkit verify` measures for correct and broken quantizers on every fixture family: the
figures its default thresholds (ckptkit/verify/thresholds.py) are chosen from.

For every fixture family, the fp32 bundle's diffusion model and text encoders are quantized (as the
default client, ComfyUI-GGUF, writes them: CLIPs stay safetensors, T5 is GGUF) with
each type (f16 and bf16 casts too), and with two deliberately broken quantizers: Q8_0 with every
block's fp16 scale doubled (the whole tensor x2) and Q4_K (q4_k_s) with every super-block scale
`d` doubled (the mins untouched). Each set is checked against the bundle as `verify --against`
checks it:

  numeric   per tensor, by the type it is STORED in (K-quant requests fall back on the tiny
            fixtures' short rows, so a q4_k_m set holds Q5_0/Q8_0/... too): worst cosine, worst
            relative RMS error
  1-step    per stage output (text encoder hidden/pooled, diffusion latent, e2e latent) cosine and
            relative RMS, keyed by the threshold type `verify` applies (the component's least precise
            quantized type it holds; e2e: the least precise of the set), and e2e image PSNR / SSIM

and the tables print min / median over families (worst-case direction: min for cosine, PSNR and
SSIM, max for relative RMS). With --tiny-timings the 1-step check's phases on the q8_0 sets are
printed too.

    python bench/measure_thresholds.py [--families sd1,sdxl,...] [--workdir bench/out/thresholds]
                                       [--json bench/out/thresholds.json]
    python bench/measure_thresholds.py --tiny-timings [--threads 1] [--repeat 5] [--families ...]
    python bench/measure_thresholds.py --real-sdxl [--real-types q8_0,bf16] [--resolution 256] [--device cpu|cuda]

--real-sdxl times `ckptkit verify --against` (1-step check included) on real-shape SDXL sets
instead: the bundle built from ../shared/manifests/sdxl_base.json with random weights (F16,
6.9 GB, streamed), its UNet quantized to each type; phases from the report, peak RSS from
/usr/bin/time, every numeric and 1-step figure; every file deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REQUESTS = ["f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]
BROKEN = {"broken_q8_0": ("q8_0", "Q8_0"), "broken_q4_k": ("q4_k_s", "Q4_K")}
# threshold keys from most to least precise (e2e is judged by the least precise component's)
ORDER = ["plain", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K"]


def make_set(bundle: Path, out: Path, config: str) -> Path:
    from ckptkit import pipeline
    from ckptkit.fixtures.damage import broken_scales, refresh_manifest, rewrite_gguf
    from ckptkit.quant.policy import Policy

    request, broken_type = BROKEN.get(config, (config, None))
    if out.exists():
        shutil.rmtree(out)
    probe = pipeline.quantize(bundle, out, Policy(diffusion_model=request), dry_run=True)
    tes = [c for c, i in probe.plan.info["components"].items() if i["role"] == "text_encoder"]
    # the default client's sets (ComfyUI-GGUF): SD UNet convs quantized as 256-wide rows, T5 as GGUF,
    # CLIPs kept safetensors (its loader reads no CLIP GGUF); Sana written for diffusers
    pipeline.quantize(bundle, out, Policy(diffusion_model=request, components={t: request for t in tes}))
    if broken_type:
        for f in sorted(out.glob("*.gguf")):
            rewrite_gguf(f, f, broken_scales(broken_type))
            refresh_manifest(out, f.stem)
    return out


def measure(bundle: Path, qdir: Path) -> dict:
    from ckptkit.quant.types import PLAIN
    from ckptkit.verify.coverage import component_quant_type, type_summary
    from ckptkit.verify.numeric import _canonical, tensor_errors
    from ckptkit.verify.onestep import run_onestep
    from ckptkit.verify.sets import open_set

    cand, ref = open_set(qdir), open_set(bundle)
    try:
        keys, used = {}, Counter()
        for name, comp in cand.components.items():
            summary = type_summary(comp)
            keys[name] = component_quant_type(summary) or "plain"
            if comp.spec.role != "vae":
                for t, v in summary.items():
                    used[t] += v["bytes"]
        numeric: dict[str, dict] = {}
        for name, comp in cand.components.items():
            other = ref.components[name]
            c_ops, r_ops = _canonical(comp), _canonical(other)
            for tname, e in c_ops.items():
                c_t, r_t = e.evaluate(comp.ckpt.load), r_ops[tname].evaluate(other.ckpt.load)
                if not c_t.is_floating_point():
                    continue
                dtype = comp.ckpt.tensors[e.sources()[0]].dtype if e.sources() else "F32"
                key = "plain" if dtype in PLAIN else dtype
                errs = tensor_errors(c_t, r_t)
                cur = numeric.setdefault(key, {"min_cosine": 1.0, "max_rel_rms": 0.0, "tensors": 0})
                cur["tensors"] += 1
                if errs["cosine"] < cur["min_cosine"]:
                    cur["min_cosine"], cur["worst_cosine"] = errs["cosine"], f"{name}:{tname}"
                if errs["rel_rms"] > cur["max_rel_rms"]:
                    cur["max_rel_rms"], cur["worst_rel_rms"] = errs["rel_rms"], f"{name}:{tname}"
        result = run_onestep(ref, cand, device="cpu", seed=0)
        e2e_key = max(keys.values(), key=ORDER.index)
        stages = []
        for stage in result.checks():
            if not stage.applicable:
                continue
            for output, cmp in stage.outputs.items():
                row = {"stage": f"{stage.stage}:{output}", "component": stage.component,
                       "key": e2e_key if stage.stage == "e2e" else keys.get(stage.component, e2e_key),
                       "cosine": cmp.cosine, "rel_rms": cmp.rel_rms}
                if cmp.psnr is not None:
                    row.update(psnr=cmp.psnr, ssim=cmp.ssim)
                stages.append(row)
        cside = result.timings["candidate"]
        timings = {phase: round(sum(cside[phase].values()), 4) for phase in ("load", "dequantize", "forward")}
        timings["total"] = result.timings["total"]
        return {"keys": keys, "types_used": dict(used), "numeric": numeric, "stages": stages, "timings": timings}
    finally:
        cand.close()
        ref.close()


def verdict(bundle: Path, qdir: Path) -> dict:
    """What `ckptkit verify QDIR --against BUNDLE` says with the current default thresholds."""
    from ckptkit.verify import VerifyOptions, run_verify

    report = run_verify(qdir, VerifyOptions(against=str(bundle), device="cpu"))
    failing = [r for r in report.results if r.passed is False]
    return {"passed": report.passed, "numeric": not any(r.check == "numeric" for r in failing),
            "onestep": not any(r.check == "onestep" for r in failing),
            "failing": [f"{r.check}/{r.component}/{r.metric}" for r in failing]}


def run(families: list[str], workdir: Path, configs: list[str]) -> dict:
    from ckptkit.fixtures.factory import write_bundle

    out: dict = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for fam in families:
        bundle = write_bundle(fam, workdir / f"{fam}.safetensors", dtype=None)
        for config in configs:
            t0 = time.perf_counter()
            qdir = make_set(bundle, workdir / f"{fam}-{config}", config)
            out.setdefault(fam, {})[config] = m = measure(bundle, qdir)
            m["verdict"] = verdict(bundle, qdir)
            shutil.rmtree(qdir)
            worst = min((s for s in m["stages"]), key=lambda s: s["cosine"], default=None)
            e2e = next((s for s in m["stages"] if s["stage"] == "e2e:image"), None)
            print(f"{fam:13s} {config:12s} {time.perf_counter() - t0:5.1f}s  keys {m['keys']}  worst stage "
                  f"{worst and (worst['stage'], round(worst['cosine'], 5))}  e2e psnr "
                  f"{e2e and round(e2e['psnr'], 2)}", file=sys.stderr, flush=True)
        bundle.unlink()
    return out


# --- tables -------------------------------------------------------------------------------------

def _mm(values, worst=min, digits=5) -> str:
    """worst / median; NaN (a non-finite output) is counted apart: it fails every check."""
    import math

    values = values or []
    nan = sum(1 for v in values if isinstance(v, float) and math.isnan(v))
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return f"NaN x{nan}" if nan else "-"
    fmt = (lambda v: f"{v:.{digits}f}") if digits else (lambda v: f"{v:.2f}")
    return f"{fmt(worst(values))} / {fmt(statistics.median(values))}" + (f" (+NaN x{nan})" if nan else "")


def _worst(values, worst=min) -> float:
    """min / max that returns NaN when any value is NaN (Python's min and max do not)."""
    import math

    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else worst(values)


def tables(data: dict) -> str:
    families = list(data)
    configs = list(next(iter(data.values())))
    lines = [f"families: {', '.join(families)} (each figure: worst / median over families)", ""]

    # A: per request
    lines += ["| request | stored types (share of quantized components' bytes) | numeric: worst cosine of a "
              "quantized tensor | numeric: worst rel RMS | 1-step: worst stage cosine | e2e PSNR dB | e2e SSIM |",
              "|---|---|---|---|---|---|---|"]
    for config in configs:
        used = Counter()
        cos, rel, stage, psnr, ssim = [], [], [], [], []
        skipped = [fam for fam in families if not effective(config, data[fam][config])]
        for fam in families:
            m = data[fam][config]
            if fam in skipped:
                continue
            total = sum(m["types_used"].values())
            for t, b in m["types_used"].items():
                used[t] += b / total / len(families)
            q = {k: v for k, v in m["numeric"].items() if k != "plain"} or m["numeric"]
            cos.append(_worst(v["min_cosine"] for v in q.values()))
            rel.append(_worst((v["max_rel_rms"] for v in q.values()), max))
            stage.append(_worst(s["cosine"] for s in m["stages"]))
            psnr += [s["psnr"] for s in m["stages"] if "psnr" in s and s["stage"] == "e2e:image"]
            ssim += [s["ssim"] for s in m["stages"] if "ssim" in s and s["stage"] == "e2e:image"]
        n = len(families) - len(skipped)
        share = ", ".join(f"{t} {100 * v * len(families) / n:.0f}%" for t, v in used.most_common() if v >= 0.005)
        if skipped:
            share += f" (not {', '.join(skipped)}: no {BROKEN[config][1]} tensor there)"
        lines.append(f"| {config} | {share} | {_mm(cos)} | {_mm(rel, max, 4)} | {_mm(stage)} | "
                     f"{_mm([p for p in psnr if p != float('inf')], min, 0) if psnr else '-'} | {_mm(ssim, min, 4)} |")

    # B: by threshold key, correct vs broken
    lines += ["", "By the type a threshold is keyed on (numeric: the stored type of each tensor; 1-step: the "
              "component's least precise type, e2e: the least precise in the set). Correct quantizers:", ""]
    lines += _by_key(data, families, [c for c in configs if c not in BROKEN])
    lines += ["", "Broken quantizers (scales x2), judged by the same keys; each figure: BEST (closest to passing) / "
              "median over the sets; numeric: only the damaged type's tensors:", ""]
    lines += _by_key(data, families, [c for c in configs if c in BROKEN], best=True)
    return "\n".join(lines)


def effective(config: str, m: dict) -> bool:
    """A broken set is broken only if it holds tensors of the damaged type (on the tiny fixtures
    every Q4_K row may have fallen back to another type)."""
    return config not in BROKEN or BROKEN[config][1] in m["types_used"]


def _by_key(data, families, configs, best: bool = False) -> list[str]:
    num_cos, num_rel = defaultdict(list), defaultdict(list)
    st_cos, st_rel, psnr, ssim = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    for config in configs:
        for fam in families:
            m = data[fam][config]
            if not effective(config, m):
                continue
            for key, v in m["numeric"].items():
                if config in BROKEN and key != BROKEN[config][1]:  # only the damaged tensors
                    continue
                num_cos[key].append(v["min_cosine"])
                num_rel[key].append(v["max_rel_rms"])
            per_key_cos, per_key_rel = defaultdict(list), defaultdict(list)
            for s in m["stages"]:
                if s["stage"] == "e2e:image":
                    psnr[s["key"]].append(s["psnr"])
                    ssim[s["key"]].append(s["ssim"])
                    continue
                if s["stage"] == "vae:image":  # the VAE is never quantized: plain, exact
                    continue
                per_key_cos[s["key"]].append(s["cosine"])
                per_key_rel[s["key"]].append(s["rel_rms"])
            for key in per_key_cos:
                st_cos[key].append(_worst(per_key_cos[key]))
                st_rel[key].append(_worst(per_key_rel[key], max))
    lo, hi = (max, min) if best else (min, max)  # broken sets: the one closest to passing
    out = ["| type | numeric: tensor cosine | numeric: tensor rel RMS | 1-step: stage cosine | 1-step: stage rel RMS "
           "| e2e PSNR dB | e2e SSIM |", "|---|---|---|---|---|---|---|"]
    for key in ORDER:
        if not (num_cos.get(key) or st_cos.get(key) or psnr.get(key)):
            continue
        finite = [p for p in psnr.get(key, []) if p != float("inf")]
        p = _mm(finite, lo, 0) if finite else ("inf" if psnr.get(key) else "-")  # inf: identical images
        out.append(f"| {key} | {_mm(num_cos.get(key), lo)} | {_mm(num_rel.get(key), hi, 4)} | {_mm(st_cos.get(key), lo)} | "
                   f"{_mm(st_rel.get(key), hi, 4)} | {p} | {_mm(ssim.get(key), lo, 4)} |")
    return out


FACTOR = 10.0  # headroom over the worst correct measurement, in squared error (10 dB)


def suggest(data: dict) -> dict[str, dict[str, float]]:
    """Per threshold key, the strictest limits that leave every correct quantizer FACTOR x its worst
    measured squared error: 1 - cosine and 1 - SSIM x FACTOR, relative RMS x sqrt(FACTOR), PSNR -
    10 log10(FACTOR) dB; rounded towards permissive (two significant digits of the error), then made
    monotone (a less precise type never gets a stricter limit). A type with no measurement takes
    the limits of the next less precise type that has one."""
    import math

    worst: dict[str, dict[str, float]] = {}
    for fam, configs in data.items():
        for config, m in configs.items():
            if config in BROKEN:
                continue
            for key, v in m["numeric"].items():
                w = worst.setdefault(key, {})
                w["cos"] = min(w.get("cos", 1.0), v["min_cosine"])
                w["rel"] = max(w.get("rel", 0.0), v["max_rel_rms"])
            for st in m["stages"]:
                w = worst.setdefault(st["key"], {})
                if st["stage"] == "e2e:image":
                    w["psnr"] = min(w.get("psnr", math.inf), st["psnr"])
                    w["ssim"] = min(w.get("ssim", 1.0), st["ssim"])
                elif st["stage"] != "vae:image":
                    w["cos"] = min(w.get("cos", 1.0), st["cosine"])

    def down(x: float, digits: int) -> float:  # 1 - x rounded UP to `digits` significant digits
        err = 1 - x
        if err <= 0:
            return 1.0
        scale = 10 ** (math.floor(math.log10(err)) - digits + 1)
        return round(1 - math.ceil(err / scale) * scale, 10)

    def up(x: float) -> float:  # to 2 significant digits, upwards
        scale = 10 ** (math.floor(math.log10(x)) - 1)
        return round(math.ceil(x / scale) * scale, 10)

    rule: dict[str, dict[str, float | None]] = {}
    for key in ORDER:
        w = worst.get(key, {})
        rule[key] = {"min_cosine": down(1 - FACTOR * (1 - w["cos"]), 2) if "cos" in w else None,
                     "max_rel_rms": up(w["rel"] * math.sqrt(FACTOR)) if w.get("rel") else None,
                     "min_psnr": math.floor(w["psnr"] - 10 * math.log10(FACTOR)) if "psnr" in w else None,
                     "min_ssim": down(1 - FACTOR * (1 - w["ssim"]), 2) if "ssim" in w else None}
    # unmeasured: the next less precise type's value
    for i, key in enumerate(ORDER):
        for k, v in rule[key].items():
            if v is None:
                rule[key][k] = next((rule[t][k] for t in ORDER[i + 1:] if rule[t][k] is not None), None)
    # monotone: a less precise type is never stricter than a more precise one
    for prev, key in zip(ORDER, ORDER[1:]):
        for k, v in rule[key].items():
            p = rule[prev][k]
            if v is not None and p is not None:
                rule[key][k] = max(v, p) if k == "max_rel_rms" else min(v, p)
    return rule


def suggest_table(data: dict) -> str:
    from ckptkit.verify.thresholds import DEFAULTS

    lines = [f"| type | rule ({FACTOR:g}x squared error): min cosine / max rel RMS / min PSNR / min SSIM | "
             "defaults now: min cosine / max rel RMS / min PSNR / min SSIM |", "|---|---|---|"]
    for key, lim in suggest(data).items():
        d = DEFAULTS.get(key)
        now = f"{d.min_cosine} / {d.max_rel_rms} / {d.min_psnr} / {d.min_ssim}" if d else "-"
        lines.append(f"| {key} | {lim['min_cosine']} / {lim['max_rel_rms']} / {lim['min_psnr']} / {lim['min_ssim']} | {now} |")
    return "\n".join(lines)


def verdict_table(data: dict) -> str:
    """Per request: in how many families `verify` passed (numeric, 1-step, overall) with the
    defaults the run had."""
    lines = ["| request | numeric passes | 1-step passes | verify passes | failing rows (union over the families) |",
             "|---|---|---|---|---|"]
    configs = list(next(iter(data.values())))
    for config in configs:
        sets = [(fam, data[fam][config]) for fam in data if effective(config, data[fam][config])]
        v = [m["verdict"] for _, m in sets if "verdict" in m]
        if not v:
            continue
        fails = sorted({f for x in v for f in x["failing"]})
        lines.append(f"| {config} | {sum(x['numeric'] for x in v)}/{len(v)} | {sum(x['onestep'] for x in v)}/{len(v)} | "
                     f"{sum(x['passed'] for x in v)}/{len(v)} | {', '.join(fails[:6])}{' ...' if len(fails) > 6 else ''} |")
    return "\n".join(lines)


def tiny_timings(families: list[str], workdir: Path, repeat: int = 3) -> dict:
    """The 1-step check on each family's q8_0 set (diffusion model + text encoders) against its fp32
    bundle, CPU, default torch threads: one warm-up run, then the median of `repeat` runs per phase
    (summed over components) and side."""
    import torch

    from ckptkit.fixtures.factory import write_bundle
    from ckptkit.verify.onestep import run_onestep
    from ckptkit.verify.sets import open_set

    out = {"threads": torch.get_num_threads()}
    workdir.mkdir(parents=True, exist_ok=True)
    for fam in families:
        bundle = write_bundle(fam, workdir / f"{fam}.safetensors", dtype=None)
        qdir = make_set(bundle, workdir / f"{fam}-q8_0", "q8_0")
        cand, ref = open_set(qdir), open_set(bundle)
        runs = []
        try:
            for i in range(repeat + 1):
                r = run_onestep(ref, cand, device="cpu", seed=0)
                if i:
                    runs.append(r.timings)
        finally:
            cand.close()
            ref.close()
        med = {"total": statistics.median(t["total"] for t in runs)}
        for side in ("reference", "candidate"):
            for phase in ("load", "dequantize", "forward"):
                med[f"{side}.{phase}"] = statistics.median(sum(t[side][phase].values()) for t in runs)
        med["image"] = r.image_size
        out[fam] = med
        shutil.rmtree(qdir)
        bundle.unlink()
        print(fam, {k: round(v, 4) if isinstance(v, float) else v for k, v in med.items()}, file=sys.stderr, flush=True)
    return out


def tiny_timing_table(t: dict) -> str:
    lines = [f"CPU, {t['threads']} torch threads, median of the runs after a warm-up; seconds, each phase summed "
             "over the components (reference / candidate)", "",
             "| family | image px | load | dequantize | forward | 1-step total |", "|---|---|---|---|---|---|"]
    for fam, m in t.items():
        if fam == "threads":
            continue
        lines.append(f"| {fam} | {m['image'][0]} | {m['reference.load']:.3f} / {m['candidate.load']:.3f} | "
                     f"{m['reference.dequantize']:.3f} / {m['candidate.dequantize']:.3f} | "
                     f"{m['reference.forward']:.3f} / {m['candidate.forward']:.3f} | {m['total']:.3f} |")
    return "\n".join(lines)


def timing_table(data: dict) -> str:
    lines = ["| family | load s | dequantize s | forward s | 1-step total s (both sides) |", "|---|---|---|---|---|"]
    for fam, configs in data.items():
        t = configs.get("q8_0", {}).get("timings")
        if t:
            lines.append(f"| {fam} | {t['load']:.3f} | {t['dequantize']:.3f} | {t['forward']:.3f} | {t['total']:.3f} |")
    return "\n".join(lines)


# --- the 1-step check on a real-shape SDXL set (CPU) ----------------------------------------------

SDXL_PARTS = [("model.diffusion_model.", "diffusion_model"), ("conditioner.embedders.0.transformer.", "clip_l"),
              ("conditioner.embedders.1.model.", "clip_g"), ("first_stage_model.", "vae")]
ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8}


def build_sdxl(path: Path) -> None:
    """sd_xl_base_1.0's tensor names, shapes and dtypes (../shared/manifests/sdxl_base.json) with
    random N(0, 0.02) weights (integer tensors: arange), streamed by SafetensorsWriter."""
    import math

    import torch

    from ckptkit.formats.safetensors import SafetensorsWriter

    manifest = json.loads((ROOT.parent / "shared" / "manifests" / "sdxl_base.json").read_text())
    specs = []
    for prefix, comp in SDXL_PARTS:
        specs += [(prefix + k, dtype, tuple(shape)) for k, (shape, dtype) in manifest["components"][comp]["tensors"].items()]
    specs.sort(key=lambda s: (-ITEMSIZE[s[1]], s[0]))
    largest = max(math.prod(shape) for _, _, shape in specs)
    pool = (torch.randn(largest + (4 << 20), generator=torch.Generator().manual_seed(0)) * 0.02).half()
    with SafetensorsWriter(path, specs, {"bench": "measure_thresholds sdxl"}) as writer:
        for i, (name, dtype, shape) in enumerate(specs):
            numel = math.prod(shape)
            if dtype == "I64":
                writer.write(name, torch.arange(numel, dtype=torch.int64).view(shape))
                continue
            start = (i * 1_000_003) % (pool.numel() - numel + 1)
            writer.write(name, pool[start:start + numel].view(shape).to({"F16": torch.float16, "F32": torch.float32,
                                                                         "BF16": torch.bfloat16}[dtype]))


def real_sdxl(workdir: Path, resolution: int, types: list[str], device: str = "cpu") -> dict:
    """Build the bundle, then per type quantize its UNet (`ckptkit quantize --type T`) and time
    `ckptkit verify SET --against BUNDLE --device DEVICE --resolution R --json` under /usr/bin/time -v.
    Every file is deleted afterwards."""
    import re
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "sdxl_real.safetensors"
    out: dict = {}
    try:
        t0 = time.perf_counter()
        build_sdxl(bundle)
        out["bundle"] = {"bytes": bundle.stat().st_size, "build_s": round(time.perf_counter() - t0, 1)}
        ck = [sys.executable, "-m", "ckptkit.cli"]
        for type_name in types:
            qdir = workdir / f"sdxl_real-{type_name}"
            try:
                t0 = time.perf_counter()
                subprocess.run([*ck, "quantize", str(bundle), "-o", str(qdir), "--type", type_name, "--force"],
                               check=True, stdout=subprocess.DEVNULL)
                quantized = time.perf_counter() - t0
                cmd = ["/usr/bin/time", "-v", *ck, "verify", str(qdir), "--against", str(bundle), "--device", device,
                       "--resolution", str(resolution), "--json"]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                wall = time.perf_counter() - t0
                report = json.loads(proc.stdout)
                rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
                out[type_name] = {
                    "quantize_s": round(quantized, 1), "verify_wall_s": round(wall, 1),
                    "peak_rss_gb": round(int(rss.group(1)) / 1e6, 2) if rss else None, "exit_code": proc.returncode,
                    "timings": report["timings"], "onestep_timings": (report["onestep"] or {}).get("timings"),
                    "image_size": (report["onestep"] or {}).get("image_size"),
                    "rows": [(r["check"], r["component"], r["metric"], r["value"], r["threshold"], r["passed"])
                             for r in report["results"] if r["check"] in ("numeric", "onestep")],
                    "set_bytes": {p.name: p.stat().st_size for p in qdir.iterdir()}}
                print(json.dumps({type_name: out[type_name]}, indent=1), file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(qdir, ignore_errors=True)
    finally:
        bundle.unlink(missing_ok=True)
    return out


def main() -> None:
    from ckptkit.fixtures.factory import FIXTURES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FIXTURES))
    parser.add_argument("--configs", default=",".join(REQUESTS + list(BROKEN)))
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "thresholds")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--from-json", type=Path, help="print the tables of an earlier run")
    parser.add_argument("--real-sdxl", action="store_true",
                        help="instead: time the 1-step check on a real-shape SDXL set (~6.9 GB bundle + its Q8_0 set)")
    parser.add_argument("--resolution", type=int, default=256, help="image side of the real-shape 1-step check")
    parser.add_argument("--tiny-timings", action="store_true",
                        help="instead: time the 1-step check on each family's q8_0 set (median of 3 runs)")
    parser.add_argument("--device", default="cpu", help="--real-sdxl: the 1-step check's device (cpu, cuda)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3, help="--tiny-timings: measured runs per family")
    parser.add_argument("--real-types", default="q8_0,bf16", help="UNet types of the real-shape sets")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.tiny_timings:
        t = tiny_timings(args.families.split(","), args.workdir, args.repeat)
        shutil.rmtree(args.workdir, ignore_errors=True)
        print(tiny_timing_table(t))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(t, indent=1))
        return
    if args.real_sdxl:
        result = real_sdxl(args.workdir, args.resolution, args.real_types.split(","), args.device)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))
        return
    if args.from_json:
        data = json.loads(args.from_json.read_text())
    else:
        data = run(args.families.split(","), args.workdir, args.configs.split(","))
        shutil.rmtree(args.workdir, ignore_errors=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(data, indent=1, default=str))
    print(tables(data))
    print()
    print(suggest_table(data))
    print()
    if any("verdict" in m for c in data.values() for m in c.values()):
        print("`ckptkit verify` with the defaults of this run:")
        print(verdict_table(data))
        print()
    print("1-step check on the q8_0 sets, candidate side (CPU):")
    print(timing_table(data))


if __name__ == "__main__":
    main()
