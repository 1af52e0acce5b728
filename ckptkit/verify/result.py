"""What every check returns: one row per check and component, with value, threshold and verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CheckResult:
    check: str  # "integrity" | "layout" | "coverage" | "numeric" | "onestep"
    component: str | None
    metric: str  # what was measured: "readable", "sha256", "nonfinite", "missing", "e2e_psnr", ...
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
