"""What a build will do, decided before anything runs: per source, its split; per source and
variant, whether its set is current (skipped) or must be made, and the memory each job needs.

Output layout under the recipe's `out`:

    SOURCE/split/            the source split once (comfy layout, stored dtypes): what every
                             variant is quantized from and verified against
    SOURCE/VARIANT/          the variant's component set and ckptkit.json, verify/ (report.json,
                             report.md, onestep.png) and build.json

A variant is current when its build.json records the same fingerprint (the source files' sha256,
the recipe entry with its verify settings, ckptkit's version and source code) and every file its
manifest lists still has the sha256 recorded there (read again, not cached). Anything else
(missing, interrupted, edited, broken) is made again. The split runs only when a variant must be
made and the split is not current itself (same source hashes and tool, files intact).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit import __version__
from ckptkit.build.recipe import Recipe, Source, Variant
from ckptkit.errors import CkptError

BUILD_RECORD = "build.json"
SPLIT = "split"
REPORT_DIR = "verify"
LOCK = ".ckptkit-build.lock"  # held by the process writing the folder (build/jobs.py)


@dataclass
class SplitJob:
    source: Source
    folder: Path
    fingerprint: dict
    status: str = "run"  # "done" | "run" | "unneeded" (every variant is current)
    reason: str = ""

    def spec(self, workers: int) -> dict:
        """What a worker needs to run this split (plain data)."""
        return {"source": str(self.source.path), "label": self.source.label, "folder": str(self.folder),
                "family": self.source.family, "config": self.source.config, "fingerprint": self.fingerprint,
                "workers": workers}


@dataclass
class VariantJob:
    source: Source
    variant: Variant
    folder: Path
    split: Path
    fingerprint: dict
    status: str = "run"  # "done" | "failed" (current, but it did not pass) | "run"
    reason: str = ""
    planned_bytes: int = 0  # the set's files
    memory: int = 0  # planned peak of the job's process (quantize, then verify), bytes
    memory_detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.source.name}/{self.variant.name}"

    def spec(self, recipe: Recipe, workers: int) -> dict:
        """What a worker needs to run this job (plain data: it crosses process and Ray boundaries)."""
        return {"key": self.key, "source": str(self.source.path), "split": str(self.split),
                "folder": str(self.folder), "variant": self.variant.entry(), "family": self.source.family,
                "config": self.source.config, "verify": recipe.verify.for_variant(self.variant),
                "fingerprint": self.fingerprint, "workers": workers, "license": recipe.license}


@dataclass
class BuildPlan:
    recipe: Recipe
    splits: list[SplitJob]
    jobs: list[VariantJob]
    budget: int | None = None  # bytes the jobs may take at once (None: unknown)
    budget_source: str = ""
    notes: list[str] = field(default_factory=list)

    def to_run(self) -> list[VariantJob]:
        return [j for j in self.jobs if j.status == "run"]

    def to_json(self) -> dict:
        return {"recipe": str(self.recipe.path), "out": str(self.recipe.out),
                "budget": self.budget, "budget_source": self.budget_source,
                "splits": [{"source": s.source.name, "folder": str(s.folder), "status": s.status, "reason": s.reason}
                           for s in self.splits],
                "variants": [{"key": j.key, "folder": str(j.folder), "status": j.status, "reason": j.reason,
                              "planned_bytes": j.planned_bytes, "memory": j.memory, "memory_detail": j.memory_detail}
                             for j in self.jobs],
                "notes": self.notes}


# ------------------------------------------------------------------ fingerprints
_CODE_DIGEST: str | None = None


def code_digest() -> str:
    """sha256 over ckptkit's own source files (.py, .c): a changed tool makes every set again,
    version number or not."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".c") and p.is_file()):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(path.read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def source_digests(path: Path) -> dict[str, str]:
    """sha256 of a source's files (a folder: every regular file under it, by relative path);
    unchanged files come from the hash cache (formats/hashing.py)."""
    from ckptkit.formats.hashing import source_sha256

    path = Path(path)
    if path.is_file():
        return {path.name: source_sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise CkptError(f"{path}: source folder holds no files")
    return {p.relative_to(path).as_posix(): source_sha256(p) for p in files}


def completed(fingerprint: dict, source: str) -> dict:
    """The fingerprint with the source's hashes filled in where the plan left them to the job."""
    return fingerprint if fingerprint.get("inputs") is not None else {**fingerprint,
                                                                      "inputs": source_digests(Path(source))}


def tool() -> dict:
    return {"version": f"ckptkit {__version__}", "code": code_digest()}


def read_record(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / BUILD_RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def files_intact(folder: Path) -> str | None:
    """None when every file the folder's manifest lists has its recorded sha256; else why not."""
    from ckptkit.engine.manifest import read_manifest
    from ckptkit.formats.files import inside
    from ckptkit.formats.hashing import file_sha256

    try:
        manifest = read_manifest(folder, check_files=False)
    except CkptError as exc:
        return f"manifest unreadable ({exc})"
    if manifest is None:
        return "no manifest"
    for name, comp in manifest["components"].items():
        try:
            path = inside(folder, comp["file"], "manifest")
        except CkptError as exc:
            return str(exc)
        if not path.is_file():
            return f"{comp['file']} missing"
        if file_sha256(path) != comp.get("sha256"):
            return f"{comp['file']} changed (sha256 differs from the manifest)"
    return None


def _current(folder: Path, fingerprint: dict) -> tuple[bool, str, dict | None]:
    record = read_record(folder)
    if record is None:
        return False, "not built" if not folder.exists() else "no build record (interrupted or not built by build)", None
    if record.get("fingerprint") != fingerprint:
        old = record.get("fingerprint") or {}
        what = [k for k in ("inputs", "recipe", "tool") if old.get(k) != fingerprint.get(k)]
        return False, f"{' and '.join(what) or 'fingerprint'} changed", record
    broken = files_intact(folder)
    if broken:
        return False, broken, record
    return True, "", record


# ------------------------------------------------------------------ memory
def quantize_memory(plan, workers: int, base: int) -> tuple[int, str]:
    """Planned peak of the executor on `plan` (engine/execute.py): max(2, workers) tensors produced
    ahead plus the one being written, each holding its source bytes, a float32 working copy, the
    quantizer's float32 temporaries and its output."""
    from ckptkit.formats.dtypes import itemsize

    def size(code: str) -> int:
        try:
            return itemsize(code)
        except (KeyError, ValueError):
            return 4  # a quantized source type: at most a float32's worth

    largest = 0
    for out in plan.outputs:
        for op in out.tensors:
            numel = math.prod(op.shape) if op.shape else 1
            largest = max(largest, numel * (size(op.src_dtype) + 8) + op.nbytes)
    in_flight = max(2, workers) + 1
    peak = base + in_flight * largest
    return peak, f"quantize {in_flight} x {_h(largest)} in flight"


def verify_memory(ckpt, settings: dict) -> tuple[int, str]:
    """verify's own memory plan (verify/memory.py) for the reference, which the candidate's models
    equal in the compute dtype: one model at a time."""
    import torch

    from ckptkit.verify.memory import RESERVE, plan_memory
    from ckptkit.verify.onestep import DTYPES, model_set, resolve_device

    if not settings["onestep"]:
        return 0, "no 1-step check"
    ms = model_set(ckpt, label="reference")
    device = resolve_device(settings["device"])
    plan = plan_memory(ms, ms, device if device.type == "cpu" else torch.device("cpu"), DTYPES[settings["dtype"]])
    return plan.peak + RESERVE, f"verify {plan.line().split(';')[0]}"


def _h(n: int) -> str:
    from ckptkit.units import human_bytes

    return human_bytes(n)


# ------------------------------------------------------------------ the plan
def plan_build(recipe: Recipe, workers: int = 1, memory_limit: int | None = None, with_memory: bool = True
               ) -> BuildPlan:
    """Decide every job's status, and plan the memory of those that will run."""
    import torch

    from ckptkit.verify.memory import available, rss_bytes

    splits, jobs = [], []
    for src in recipe.sources:
        split_folder = recipe.out / src.name / SPLIT
        # the source's hashes are needed only to compare with an earlier build's records; a first
        # build leaves them to the jobs, which read them from the hash cache the split filled (the
        # source is read once, by the split)
        earlier = any((recipe.out / src.name / d / BUILD_RECORD).exists()
                      for d in [SPLIT, *(v.name for v in recipe.variants)])
        inputs = source_digests(src.path) if earlier else None
        split_fp = {"inputs": inputs, "tool": tool(), "recipe": {"family": src.family, "config": src.config}}
        sjob = SplitJob(src, split_folder, split_fp)
        need_split = False
        for variant in recipe.variants:
            folder = recipe.out / src.name / variant.name
            fp = {"inputs": inputs, "tool": tool(), "recipe": json.loads(recipe.fingerprint_of(variant)),
                  "source": {"family": src.family, "config": src.config}}
            job = VariantJob(src, variant, folder, split_folder, fp)
            ok, why, record = _current(folder, fp)
            if ok:
                verdict = (record or {}).get("verify", {})
                job.status = "done" if verdict.get("passed") else "failed"
                job.reason = "current" if job.status == "done" else "current, did not pass verify"
                if verdict.get("status") in ("refused", "interrupted"):  # not a verdict on the files: again
                    job.status, job.reason = "run", f"verify was {verdict['status']}"
            else:
                job.reason = why
            need_split |= job.status == "run"
            jobs.append(job)
        if need_split:
            ok, why, _ = _current(split_folder, split_fp)
            sjob.status, sjob.reason = ("done", "current") if ok else ("run", why)
        else:
            sjob.status, sjob.reason = "unneeded", "every variant is current"
        splits.append(sjob)
    plan = BuildPlan(recipe, splits, jobs)
    room, plan.budget_source = available(torch.device("cpu"), memory_limit)
    plan.budget = room
    if with_memory:
        base = rss_bytes()
        for src in recipe.sources:
            todo = [j for j in jobs if j.source is src and j.status == "run"]
            if todo:
                _plan_source_jobs(recipe, src, todo, workers, base)
    return plan


def _plan_source_jobs(recipe: Recipe, src: Source, jobs: list[VariantJob], workers: int, base: int) -> None:
    """Plan each job's quantization on the source itself (the split holds the same tensors) and
    the memory of quantizing and verifying it."""
    from ckptkit import pipeline
    from ckptkit.formats import open_checkpoint

    with open_checkpoint(src.path) as ckpt:
        pipeline.given(ckpt, src.config, src.family)
        verify_peak, verify_line = verify_memory(pipeline.values(ckpt), recipe.verify.for_variant(jobs[0].variant))
    for job in jobs:
        qplan = pipeline.quantize(src.path, job.folder, job.variant.policy(), dry_run=True, scan=False,
                                  config=src.config, family=src.family).plan
        job.planned_bytes = pipeline.planned_bytes(qplan)
        qpeak, qline = quantize_memory(qplan, workers, base)
        job.memory = max(qpeak, verify_peak)
        job.memory_detail = f"{qline}; {verify_line}" if verify_line else qline
