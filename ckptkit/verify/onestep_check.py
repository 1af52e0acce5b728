"""The 1-step inference check as verify rows: runs the engine (onestep.py) on the candidate and
reference sets and compares every stage with the thresholds of the candidate's types."""

from __future__ import annotations

from pathlib import Path

from ckptkit.verify.onestep import run_onestep
from ckptkit.verify.result import Findings
from ckptkit.verify.thresholds import Thresholds


def _e2e_limits(limits: dict[str, Thresholds]) -> Thresholds:
    """End to end passes through every component: the most permissive one rules (when the caller
    does not give the limits of the least precise type, as run_verify does)."""
    return min(limits.values(), key=lambda t: t.min_psnr)


def check_onestep(cand, ref, limits: dict[str, Thresholds], opts, e2e: Thresholds | None = None):
    result = run_onestep(ref, cand, seed=opts.seed, device=opts.device, dtype=opts.dtype, resolution=opts.resolution)
    out = Findings()
    e2e = e2e or _e2e_limits(limits)
    for stage in result.checks():
        if not stage.applicable:
            out.add("onestep", stage.component, stage.stage, None, None, None, stage.reason)
            continue
        limit = e2e if stage.stage == "e2e" else limits.get(stage.component, e2e)
        for output, cmp in stage.outputs.items():
            label = f"{stage.stage}:{output}"
            if stage.stage == "e2e" and output == "image":
                out.add("onestep", "e2e", "psnr_db", round(cmp.psnr, 3), limit.min_psnr, cmp.psnr >= limit.min_psnr,
                        f"rel RMS {cmp.rel_rms:.3g}")
                out.add("onestep", "e2e", "ssim", round(cmp.ssim, 5), limit.min_ssim, cmp.ssim >= limit.min_ssim)
                continue
            out.add("onestep", stage.component, f"{label} cosine", round(cmp.cosine, 6), limit.min_cosine,
                    cmp.cosine >= limit.min_cosine, f"rel RMS {cmp.rel_rms:.3g}, max abs {cmp.max_abs:.3g}")
    summary = result.to_json()
    out.add("onestep", None, "time_s", round(result.timings.get("total", 0.0), 3), None, None,
            f"{result.device}, {result.dtype}, {result.image_size} px, sampler {result.sampler}")
    return out, summary, result


def save_onestep_png(result, path: str | Path) -> Path:
    return result.save_png(path)
