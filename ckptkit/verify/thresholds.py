"""Pass/fail thresholds, by the quantization type a component is stored in (per tensor: the type
it is stored in; 1-step stages: the least precise quantized type
the component holds (a Q4_K_M file with Q5_0/Q8_0 fallback rows is judged as Q4_K); end to end: the
least precise component's type).

The defaults are measured (docs/BENCHMARKS.md, "Verify: thresholds measured on the fixtures";
`python bench/measure_thresholds.py`): every fixture family quantized with each type, and with two
broken quantizers (Q8_0 and Q4_K block scales x2). Each limit leaves a correct quantizer of its
type 10x the worst squared error measured over the families (1 - cosine and 1 - SSIM x10,
relative RMS x3.2, PSNR -10 dB), rounded towards permissive and monotone in precision; the broken
quantizers fail both the numeric and the 1-step check with them. The fixtures are small networks:
a real model's 1-step figures accumulate more error over its depth, which is what the headroom
is for. Override with --min-cosine / --min-psnr / --min-ssim / --max-rel-rms or a TOML file:

    [default]            # any type
    min_cosine = 0.99
    [Q4_K]               # or [plain], [Q8_0], ... (the keys of DEFAULTS)
    min_psnr = 25.0
    max_rel_rms = 0.3
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ckptkit.errors import CkptError


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float  # worst per-tensor cosine (numeric check) and per-output cosine (1-step)
    min_psnr: float  # end-to-end image PSNR in dB (1-step)
    min_ssim: float  # end-to-end image SSIM (1-step)
    max_rel_rms: float  # worst per-tensor relative RMS error (numeric check): cosine is blind to scale


KEYS = ("min_cosine", "min_psnr", "min_ssim", "max_rel_rms")


# Unquantized (or plain-cast) candidates must be near identical; quantized ones by type, from the
# most to the least precise (least_precise() relies on this order). Measured: docs/BENCHMARKS.md.
DEFAULTS: dict[str, Thresholds] = {
    #                  min_cosine  min_psnr  min_ssim  max_rel_rms
    "plain": Thresholds(0.9998, 55.0, 0.9995, 0.01),
    "Q8_0": Thresholds(0.999, 50.0, 0.999, 0.02),
    # Scaled safetensors (formats/scaled.py), ComfyUI-quantized Linear weights of the fixtures.
    # Worst per tensor (all fixtures, f32): int8 tensorwise cosine 0.99993 / rel RMS 0.012, fp8 e4m3
    # 0.99964 / 0.027, e5m2 0.9985 / 0.054. Worst end to end (bf16 sd1/sdxl/sd3/flux_dev): int8 61.8 dB
    # / SSIM 0.99998, e4m3 47.0 dB / 0.9995 (latent cosine 0.99983), e5m2 40.5 dB / 0.9979 (0.9993).
    # An e4m3 text encoder (sdxl clip_g, `quantize --to comfy`): pooled output cosine 0.9986.
    "INT8": Thresholds(0.999, 50.0, 0.999, 0.03),
    "F8_E4M3": Thresholds(0.997, 40.0, 0.995, 0.05),
    "Q6_K": Thresholds(0.99, 40.0, 0.998, 0.06),
    "F8_E5M2": Thresholds(0.995, 35.0, 0.99, 0.1),
    "Q5_K": Thresholds(0.98, 35.0, 0.99, 0.12),
    "Q5_1": Thresholds(0.96, 35.0, 0.99, 0.13),
    "Q5_0": Thresholds(0.92, 34.0, 0.99, 0.14),
    # Q4_K: broken Q4_K sets of SD3 / FLUX are caught by the 1-step check only end to end (latent
    # cosine 0.97-0.99 passes 0.92); the closest gives 28.5 dB / SSIM 0.966: keep >= 29 dB, 0.97
    "Q4_K": Thresholds(0.92, 30.0, 0.97, 0.23),
    "Q4_1": Thresholds(0.67, 28.0, 0.96, 0.28),
    "Q4_0": Thresholds(0.67, 28.0, 0.96, 0.28),
    "Q3_K": Thresholds(0.67, 23.0, 0.88, 0.48),
    "Q2_K": Thresholds(0.16, 20.0, 0.70, 0.95),
}


def least_precise(types) -> str | None:
    """Of some types (None: plain), the least precise: DEFAULTS lists the
    types from most to least precise, and a type it does not list (IQ4_XS, ...) counts as less
    precise than any. End to end passes through every component, so its limits are this type's."""
    order = list(DEFAULTS)
    types = list(types)
    if not types:
        return None
    return max(types, key=lambda t: order.index(t or "plain") if (t or "plain") in order else len(order))


def for_type(type_name: str | None, overrides: dict | None = None) -> Thresholds:
    base = DEFAULTS.get(type_name or "plain", DEFAULTS["Q2_K"] if type_name else DEFAULTS["plain"])
    over = {**(overrides or {}).get("default", {}), **(overrides or {}).get(type_name or "plain", {})}
    return replace(base, **{k: float(v) for k, v in over.items() if v is not None})


def check_overrides(data: dict, where: str) -> dict:
    """Thresholds by section ([default] or a type), each a number under a known key; else one line."""
    for section, values in data.items():
        if not isinstance(values, dict):
            raise CkptError(f"{where}: {section} = ... outside a section; put it under [default] or [<type>]")
        if section != "default" and section not in DEFAULTS:
            raise CkptError(f"{where}: unknown section [{section}]; use [default] or one of "
                            f"{', '.join(f'[{t}]' for t in DEFAULTS)}")
        bad = set(values) - set(KEYS)
        if bad:
            raise CkptError(f"{where}: unknown threshold keys {sorted(bad)} in [{section}] (known: {', '.join(KEYS)})")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CkptError(f"{where}: [{section}] {key} must be a number, not {value!r}")
    return data


def load_overrides(path: str | Path | None, min_cosine: float | None, min_psnr: float | None,
                   min_ssim: float | None, max_rel_rms: float | None = None) -> dict:
    data: dict = {}
    if path:
        from ckptkit.formats.files import read_toml_file

        data = check_overrides(read_toml_file(path, None, "thresholds file"), str(path))
    cli = {k: v for k, v in (("min_cosine", min_cosine), ("min_psnr", min_psnr), ("min_ssim", min_ssim),
                             ("max_rel_rms", max_rel_rms)) if v is not None}
    if cli:  # command-line values apply to every type
        data = {section: {**values, **cli} for section, values in data.items()} | {"default": {**data.get("default", {}), **cli}}
        for type_name in DEFAULTS:
            data.setdefault(type_name, {}).update(cli)
    return data
