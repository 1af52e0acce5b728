"""Pass/fail thresholds, by the quantization type a component is stored in. Defaults come from
measurements on the fixtures (`bench/measure_thresholds.py`, figures in docs/BENCHMARKS.md): each
sits well below what a correct quantizer of that type reaches and well above what a broken one
(scales off by 2x) gives. Override with --min-psnr / --min-cosine or a TOML file:

    [default]            # any type
    min_cosine = 0.99
    [Q4_K]
    min_psnr = 25.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from ckptkit.errors import CkptError


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float  # worst per-tensor cosine (numeric check) and per-output cosine (1-step)
    min_psnr: float  # end-to-end image PSNR in dB (1-step)
    min_ssim: float  # end-to-end image SSIM (1-step)


# Unquantized (or plain-cast) candidates must be near identical; quantized ones by type.
DEFAULTS: dict[str, Thresholds] = {
    "plain": Thresholds(0.9999, 40.0, 0.98),
    "Q8_0": Thresholds(0.9995, 30.0, 0.95),
    "Q6_K": Thresholds(0.998, 26.0, 0.90),
    "Q5_K": Thresholds(0.995, 24.0, 0.85),
    "Q5_1": Thresholds(0.995, 24.0, 0.85),
    "Q5_0": Thresholds(0.995, 24.0, 0.85),
    "Q4_K": Thresholds(0.99, 20.0, 0.75),
    "Q4_1": Thresholds(0.99, 20.0, 0.75),
    "Q4_0": Thresholds(0.985, 20.0, 0.75),
    "Q3_K": Thresholds(0.96, 16.0, 0.6),
    "Q2_K": Thresholds(0.90, 12.0, 0.45),
}


def for_type(type_name: str | None, overrides: dict | None = None) -> Thresholds:
    base = DEFAULTS.get(type_name or "plain", DEFAULTS["Q2_K"] if type_name else DEFAULTS["plain"])
    over = {**(overrides or {}).get("default", {}), **(overrides or {}).get(type_name or "plain", {})}
    return replace(base, **{k: float(v) for k, v in over.items() if v is not None})


def load_overrides(path: str | Path | None, min_cosine: float | None, min_psnr: float | None,
                   min_ssim: float | None) -> dict:
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise CkptError(f"{path}: not a readable thresholds file ({exc})") from None
        for section, values in data.items():
            bad = set(values) - {"min_cosine", "min_psnr", "min_ssim"} if isinstance(values, dict) else {section}
            if bad:
                raise CkptError(f"{path}: unknown threshold keys {sorted(bad)} in [{section}]")
    cli = {k: v for k, v in (("min_cosine", min_cosine), ("min_psnr", min_psnr), ("min_ssim", min_ssim)) if v is not None}
    if cli:  # command-line values apply to every type
        data = {section: {**values, **cli} for section, values in data.items()} | {"default": {**data.get("default", {}), **cli}}
        for type_name in DEFAULTS:
            data.setdefault(type_name, {}).update(cli)
    return data
