"""`verify`: integrity, layout, quantization coverage, numeric and 1-step checks, in one report.

run_verify(path, against=...) opens both sets, runs every check that applies and returns a
VerifyReport; exit code 0 all pass, 1 a check failed (2 is raised as CkptError: unreadable
reference or a usage error).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError, ResourceError
from ckptkit.verify.coverage import check_coverage, component_quant_type
from ckptkit.verify.integrity import check_integrity
from ckptkit.verify.layout import check_layout
from ckptkit.verify.numeric import check_numeric
from ckptkit.verify.result import CheckResult, Findings
from ckptkit.verify.sets import ComponentSet, open_set
from ckptkit.verify.thresholds import Thresholds, for_type, least_precise


@dataclass
class VerifyOptions:
    against: str | None = None
    scan: bool = True
    onestep: bool = True
    device: str = "auto"
    dtype: str = "float32"
    resolution: int | None = None
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # thresholds by type (see thresholds.py)
    config: str | None = None  # --config FILE|DIR: for the candidate and the reference (convert/configs.py)
    family: str | None = None  # --family NAME: detection overridden, candidate and reference (families/detect.py)
    expect_manifest: str | None = None  # --expect-manifest SHA256|FILE: the manifest pinned (sets.py)


@dataclass
class VerifyReport:
    path: str
    against: str | None
    family: str | None
    variant: str | None
    results: list[CheckResult]
    tables: dict
    thresholds: dict[str, dict]
    timings: dict[str, float]
    onestep: dict | None = None
    images: object = None  # the 1-step images, for onestep.png (not serialised)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_json(self) -> dict:
        """Strict JSON (non-finite floats as the strings "inf", "-inf", "nan"); the schema is
        docs/verify-report.schema.json."""
        return _strict({"schema": SCHEMA_ID, "path": self.path, "against": self.against,
                        "family": self.family, "variant": self.variant, "passed": self.passed,
                        "exit_code": self.exit_code, "results": [r.to_json() for r in self.results],
                        "tables": self.tables, "thresholds": self.thresholds, "timings": self.timings,
                        "onestep": self.onestep})


SCHEMA_ID = "ckptkit.verify-report/1"


def _strict(value):
    from ckptkit.verify.images import json_float

    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return json_float(value)


def component_types(cset: ComponentSet) -> dict[str, str | None]:
    """Each readable component's least precise quantized type (None: plain): see component_quant_type."""
    from ckptkit.verify.coverage import type_summary

    return {name: component_quant_type(type_summary(comp)) if comp.ckpt is not None else None
            for name, comp in cset.components.items()}


def component_thresholds(cset: ComponentSet, overrides: dict) -> dict[str, Thresholds]:
    return {name: for_type(qtype, overrides) for name, qtype in component_types(cset).items()}


def open_reference(path: str | Path, family: str | None = None) -> ComponentSet:
    """The reference must be read whole: anything unreadable in it is the user's error (exit 2),
    not a failed check of the candidate."""
    ref = open_set(path, family)
    bad = [c for c in ref.components.values() if c.ckpt is None]
    if bad:
        ref.close()
        raise CkptError(f"--against {path}: unreadable reference: " + "; ".join(c.error or str(c.file) for c in bad))
    return ref


def run_verify(path: str | Path, opts: VerifyOptions) -> VerifyReport:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if opts.against and opts.onestep:  # usage errors before any work
        from ckptkit.verify.onestep import resolve_device, resolve_dtype

        resolve_device(opts.device)
        resolve_dtype(opts.dtype)
    user_config = None
    if opts.config is not None:
        from ckptkit.convert.configs import UserConfig

        user_config = UserConfig.load(opts.config)
    if opts.family is not None:
        from ckptkit.families import get_family

        get_family(opts.family)
    cand = open_set(path, opts.family, opts.expect_manifest)
    ref = None
    try:
        ref = open_reference(opts.against, opts.family) if opts.against else None
        for cset in (cand, ref):
            for comp in (cset.components.values() if cset is not None else ()):
                if comp.ckpt is not None and user_config is not None:
                    comp.ckpt.user_config = user_config
        findings = Findings()
        for label, fn in (("integrity", lambda: check_integrity(cand, opts.scan)),
                          ("layout", lambda: check_layout(cand)),
                          ("coverage", lambda: check_coverage(cand, ref))):
            t0 = time.perf_counter()
            findings.extend(fn())
            timings[label] = round(time.perf_counter() - t0, 3)
        types = component_types(cand)
        limits = {name: for_type(qtype, opts.overrides) for name, qtype in types.items()}
        # end to end runs through every component: judged by the least precise one's limits
        e2e_limits = for_type(least_precise(types.values()), opts.overrides)
        onestep = images = None
        if ref is not None:
            t0 = time.perf_counter()
            findings.extend(check_numeric(cand, ref, opts.overrides))
            timings["numeric"] = round(time.perf_counter() - t0, 3)
            unknown = [c.name for c in cand.components.values() if c.spec is not None and c.spec.role == "unknown"]
            if opts.onestep and unknown:  # nothing says how to run it: reported, never passed
                findings.add("onestep", None, "run", None, None, None, "skipped: unknown family")
            elif opts.onestep and _readable(cand) and _readable(ref):
                from ckptkit.verify.onestep_check import check_onestep

                t0 = time.perf_counter()
                try:
                    step, onestep, images = check_onestep(cand, ref, limits, opts, e2e_limits)
                    findings.extend(step)
                except ResourceError:  # this machine cannot run it: exit 2, not a verdict on the files
                    raise
                except CkptError as exc:  # the candidate cannot be built into a model (e.g. a missing tensor)
                    findings.add("onestep", None, "run", None, None, False, f"could not run: {exc}")
                timings["onestep"] = round(time.perf_counter() - t0, 3)
        timings["total"] = round(time.perf_counter() - start, 3)
        return VerifyReport(str(path), opts.against, cand.family, cand.variant, findings.results, findings.tables,
                            {**{n: t.__dict__ for n, t in limits.items()}, "e2e": e2e_limits.__dict__}, timings,
                            onestep, images)
    finally:
        cand.close()
        if ref is not None:
            ref.close()


def _readable(cset: ComponentSet) -> bool:
    return all(c.ckpt is not None and c.spec is not None for c in cset.components.values())
