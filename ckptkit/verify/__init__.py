"""`verify`: integrity, layout, quantization coverage, numeric and 1-step checks, in one report.

run_verify(path, against=...) opens both sets, plans the 1-step check's memory, runs every check
that applies and returns a VerifyReport; exit code 0 all pass, 1 a check failed, 2 refused by the
memory plan (an unreadable reference or a usage error is raised as CkptError, also 2), 130
interrupted. A refused or interrupted run's report holds the rows of what ran.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.errors import CkptError, ResourceError
from ckptkit.verify.coverage import check_coverage, component_quant_type
from ckptkit.inspect import scan_nonfinite
from ckptkit.verify.integrity import (Subset, check_integrity, component_tensors, hash_rows, nonfinite_row,
                                      start_hashing)
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
    memory_limit: int | None = None  # --memory-limit: bytes this process may use in all (memory.py)
    stream_above: int | None = None  # layer-stream models larger than this (None: memory.STREAM_ABOVE)
    progress: object = None  # progress(total, label, unit="B") -> update(n) or None: bars (the CLI's)


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
    status: str = "done"  # "done" | "refused" (the machine cannot run a check) | "interrupted"
    message: str = ""  # why, for "refused" / "interrupted"

    @property
    def passed(self) -> bool:
        return self.status == "done" and all(r.passed is not False for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 a check failed, 2 refused (this machine, not the files), 130 interrupted (143 by SIGTERM)."""
        if self.status == "interrupted":
            return 143 if self.message == "terminated" else 130
        if any(r.passed is False and r.metric != "memory_plan" for r in self.results):  # a verdict on the files
            return 1
        return 2 if self.status == "refused" else 0

    def to_json(self) -> dict:
        """Strict JSON (non-finite floats as the strings "inf", "-inf", "nan"); the schema is
        docs/verify-report.schema.json."""
        return _strict({"schema": SCHEMA_ID, "path": self.path, "against": self.against,
                        "family": self.family, "variant": self.variant, "passed": self.passed,
                        "exit_code": self.exit_code, "status": self.status,
                        "message": self.message, "results": [r.to_json() for r in self.results],
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


ORDER = ("integrity", "layout", "coverage", "numeric", "onestep")  # how the report lists its rows


def _ordered(findings: Findings, cand: ComponentSet) -> list[CheckResult]:
    """Rows by check, then by component (the set's own rows first), then as they came: the checks
    overlap (hashing runs beside the value checks), the report reads in order."""
    comps = {name: i for i, name in enumerate(cand.components)}
    return sorted(findings.results, key=lambda r: (ORDER.index(r.check) if r.check in ORDER else len(ORDER),
                                                   -1 if r.component is None else comps.get(r.component, len(comps))))


def run_verify(path: str | Path, opts: VerifyOptions) -> VerifyReport:
    """Plan, then check. The memory plan of the 1-step check comes first (a refusal in a second,
    not after minutes of hashing); then integrity with hashing on a thread, layout, coverage, the
    numeric check (which also does integrity's NaN/Inf scan of what it reads), the 1-step check.
    A refusal or an interrupt still returns the report of what ran (status "refused" / "interrupted")."""
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
    findings = Findings()
    limits: dict[str, Thresholds] = {}
    e2e_limits = for_type(None, opts.overrides)
    onestep = images = None
    status, message = "done", ""
    bar = opts.progress or (lambda total, label, unit="B": None)
    phase = "integrity"  # what is running (named in an interrupted report)
    hashes: dict = {}  # component -> Future of its file's sha256 (rows made once, when done)
    try:
        ref = open_reference(opts.against, opts.family) if opts.against else None
        for cset in (cand, ref):
            for comp in (cset.components.values() if cset is not None else ()):
                if comp.ckpt is not None and user_config is not None:
                    comp.ckpt.user_config = user_config
        types = component_types(cand)
        limits = {name: for_type(qtype, opts.overrides) for name, qtype in types.items()}
        # end to end runs through every component: judged by the least precise one's limits
        e2e_limits = for_type(least_precise(types.values()), opts.overrides)
        unknown = [c.name for c in cand.components.values() if c.spec is not None and c.spec.role == "unknown"]
        run_onestep = ref is not None and opts.onestep and not unknown and _readable(cand) and _readable(ref)
        plan = None
        if run_onestep:  # decided before any work: a machine too small is told at once
            t0 = time.perf_counter()
            plan = _memory_plan(cand, ref, opts)
            findings.tables["memory_plan"] = plan.to_json()
            findings.add("onestep", None, "memory_plan", round(plan.peak / 1e9, 3),
                         None if plan.available is None else round((plan.base + plan.available - plan.reserve) / 1e9, 3),
                         plan.fits, plan.line())
            timings["memory_plan"] = round(time.perf_counter() - t0, 3)
            if not plan.fits:
                status, message = "refused", plan.refusal()
                raise _Stop()
        hashes = start_hashing(cand, bar(sum(c.file.stat().st_size for c in cand.components.values()
                                             if c.ckpt is not None), "sha256")) if cand.manifest is not None else {}
        fused = opts.scan and ref is not None  # the NaN/Inf scan rides on the numeric pass
        size = sum(c.ckpt.tensors[n].nbytes for c in cand.components.values() if c.ckpt is not None
                   for n in component_tensors(c))
        for label, fn in (("integrity", lambda: check_integrity(cand, opts.scan and not fused, hashes,
                                                                bar(size, "scan") if opts.scan and not fused else None)),
                          ("layout", lambda: check_layout(cand)),
                          ("coverage", lambda: check_coverage(cand, ref))):
            t0, phase = time.perf_counter(), label
            findings.extend(fn())
            timings[label] = round(time.perf_counter() - t0, 3)
        if ref is not None:
            t0, phase = time.perf_counter(), "numeric"
            scans: dict = {}
            findings.extend(check_numeric(cand, ref, opts.overrides, scans=scans if fused else None,
                                          progress=bar(size, "compare")))
            for name, comp in cand.components.items():
                if fused and comp.ckpt is not None:
                    scanned = Findings()
                    nonfinite_row(scanned, name, scans[name] if name in scans else
                                  scan_nonfinite(Subset(comp.ckpt, component_tensors(comp))))
                    findings.extend(scanned)
            timings["numeric"] = round(time.perf_counter() - t0, 3)
        t0, phase = time.perf_counter(), "integrity"
        findings.extend(hash_rows(cand, hashes))  # waits for the hashing thread
        hashes = {}
        timings["sha256_wait"] = round(time.perf_counter() - t0, 3)
        if ref is not None and opts.onestep and unknown:  # nothing says how to run it: reported, never passed
            findings.add("onestep", None, "run", None, None, None, "skipped: unknown family")
        elif run_onestep:
            from ckptkit.verify.onestep_check import check_onestep

            t0, phase = time.perf_counter(), "onestep"
            try:
                step, onestep, images = check_onestep(cand, ref, limits, opts, e2e_limits, plan=plan,
                                                      progress=bar(len(plan.models), "1-step models", unit="model"))
                findings.extend(step)
            except ResourceError as exc:  # this machine cannot run it: exit 2, not a verdict on the files
                status, message = "refused", str(exc)
                findings.add("onestep", None, "run", None, None, None, f"refused: {exc}")
            except CkptError as exc:  # the candidate cannot be built into a model (e.g. a missing tensor)
                findings.add("onestep", None, "run", None, None, False, f"could not run: {exc}")
            timings["onestep"] = round(time.perf_counter() - t0, 3)
    except _Stop:
        pass
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what ran is still reported
        status, message = "interrupted", "terminated" if type(exc).__name__ == "Terminated" else "interrupted"
        findings.extend(hash_rows(cand, {n: f for n, f in hashes.items() if f.done()}))  # the hashes finished
        findings.add(phase, None, "interrupted", None, None, None,
                     f"{message} after {time.perf_counter() - start:.1f} s during the {phase} check; what follows "
                     "it did not run")
    finally:
        cand.close()
        if ref is not None:
            ref.close()
    timings["total"] = round(time.perf_counter() - start, 3)
    return VerifyReport(str(path), opts.against, cand.family, cand.variant, _ordered(findings, cand),
                        findings.tables, {**{n: t.__dict__ for n, t in limits.items()}, "e2e": e2e_limits.__dict__},
                        timings, onestep, images, status, message)


class _Stop(Exception):
    """The run ends here (a refusal); the report of what ran is returned."""


def _memory_plan(cand: ComponentSet, ref: ComponentSet, opts: VerifyOptions):
    from ckptkit.verify.memory import plan_memory
    from ckptkit.verify.onestep import model_set, resolve_device, resolve_dtype

    r = model_set(ref, opts.family, None, "reference")
    c = model_set(cand, r.family, None, "candidate")
    return plan_memory(r, c, resolve_device(opts.device), resolve_dtype(opts.dtype), opts.memory_limit,
                       opts.stream_above)


def _readable(cset: ComponentSet) -> bool:
    return all(c.ckpt is not None and c.spec is not None for c in cset.components.values())
