"""The 1-step inference check as verify rows: runs the engine (onestep.py) on the candidate and
reference sets and compares every stage with the thresholds of the candidate's types."""

from __future__ import annotations

from ckptkit.verify.onestep import run_onestep
from ckptkit.verify.result import Findings
from ckptkit.verify.thresholds import Thresholds


def _e2e_limits(limits: dict[str, Thresholds]) -> Thresholds:
    """End to end passes through every component: the most permissive one rules (when the caller
    does not give the limits of the least precise type, as run_verify does)."""
    return min(limits.values(), key=lambda t: t.min_psnr)


def check_onestep(cand, ref, limits: dict[str, Thresholds], opts, e2e: Thresholds | None = None, plan=None,
                  progress=None):
    """plan: the memory plan (memory.py) made before any work; progress(n): models run."""
    result = run_onestep(ref, cand, seed=opts.seed, device=opts.device, dtype=opts.dtype, resolution=opts.resolution,
                         plan=plan, memory_limit=getattr(opts, "memory_limit", None),
                         stream_above=getattr(opts, "stream_above", None), progress=progress)
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
    for row in result.images.rows if result.images is not None else ():
        judge(row, e2e if row.stage == "e2e" else limits.get(row.component, e2e))
    summary = result.to_json()
    out.add("onestep", None, "time_s", round(result.timings.get("total", 0.0), 3), None, None,
            f"{result.device}, {result.dtype}, {result.image_size} px, sampler {result.sampler}")
    return out, summary, result


def judge(row, limit: Thresholds) -> None:
    """Set a row of onestep.png's limits and verdict as check_onestep judges its stage: the e2e
    image by PSNR and SSIM, every other output (the VAE's image too) by the cosine."""
    row.limits = ({"min_psnr": limit.min_psnr, "min_ssim": limit.min_ssim} if row.stage == "e2e"
                  else {"min_cosine": limit.min_cosine})
    row.passed = all(row.metrics[key.removeprefix("min_")] >= value for key, value in row.limits.items())
