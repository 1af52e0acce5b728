"""What every check returns: one row per check and component, with value, threshold and verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CheckResult:
    check: str  # "integrity" | "layout" | "coverage" | "numeric" | "onestep"
    component: str | None
    # what was measured: integrity "readable" | "sha256" | "gguf_blocks" | "nonfinite"; layout "tensors" |
    # "missing" | "unexpected" | "wrong_shape" | "config" | "component" | "family"; coverage "quantized" |
    # "vae_types" | "types"; numeric "min_cosine" | "max_rel_rms" | "tensors"; onestep "<stage>:<output> cosine"
    # | "psnr_db" | "ssim" | "time_s" | "run" (and the stage name for a stage not applicable)
    metric: str
    value: object  # the measured value (JSON-serialisable)
    threshold: object | None  # what it had to meet, or None for a yes/no check
    passed: bool | None  # None: not applicable / skipped (never fails the run)
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Findings:
    """Results plus the extra tables a check produces (worst tensors, type summaries)."""

    results: list[CheckResult] = field(default_factory=list)
    tables: dict[str, object] = field(default_factory=dict)

    def add(self, *args, **kwargs) -> CheckResult:
        result = CheckResult(*args, **kwargs)
        self.results.append(result)
        return result

    def extend(self, other: "Findings") -> None:
        self.results.extend(other.results)
        self.tables.update(other.tables)
