"""One unit of a build, run the same way in this process, in a worker process (`--jobs N`) or as a
Ray task (`--ray`): each takes and returns plain data, and writes only inside its own folder.

- `run_split`: the source split once into SOURCE/split (comfy layout, stored dtypes).
- `run_variant`: quantize the split by the variant's policy into SOURCE/VARIANT, verify the set
  against the split (report, 1-step image), then write build.json, last: a folder without it (an
  interrupted job) is made again by the next build.

Manifests record source paths relative to the folder they describe (`../split/...`, the source as
the recipe names it), so the same recipe gives the same bytes wherever `out` is and whoever runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ckptkit.build.plan import BUILD_RECORD, LOCK, REPORT_DIR, completed
from ckptkit.errors import CkptError


@contextlib.contextmanager
def claimed(folder: Path):
    """The folder held by this process for the job (an exclusive lock file holding its pid): two
    builds writing the same set at once would each replace the other's files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise CkptError(f"{folder}: another build is writing it (pid {other or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def summary_line(key: str, record: dict, done: int, total: int) -> str:
    """A finished job in one progress line."""
    if "error" in record:
        return f"[{done}/{total}] {key}: error: {record['error']}"
    v = record["verify"]
    verdict = "PASS" if v["passed"] else f"FAIL ({', '.join(v['failed'][:3]) or v['status']})"
    t = record["timings"]
    return f"[{done}/{total}] {key}: {verdict}; quantize {t['quantize']:.1f} s, verify {t['verify']:.1f} s"


def _write_record(folder: Path, record: dict) -> None:
    from ckptkit.formats.atomic import atomic_write

    with atomic_write(folder / BUILD_RECORD) as fh:
        fh.write((json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _relative_to(folder: Path):
    def label(path: str) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return label


def run_split(spec: dict) -> dict:
    """spec: source (path), label (as the recipe names it), folder, family, config, fingerprint."""
    folder = Path(spec["folder"])
    with claimed(folder):
        return _split(spec, folder)


def _split(spec: dict, folder: Path) -> dict:
    from ckptkit import pipeline
    from ckptkit.convert.split import SplitOptions

    (folder / BUILD_RECORD).unlink(missing_ok=True)
    started = time.perf_counter()
    source = Path(spec["source"])

    def label(path: str) -> str:  # the source as the recipe names it; a folder source's files under it
        p = Path(path).resolve()
        if p == source:
            return spec["label"]
        return f"{spec['label']}/{p.relative_to(source).as_posix()}" if source in p.parents else path

    result = pipeline.split(source, folder, SplitOptions(layout="comfy"), force=True, workers=spec.get("workers", 1),
                            config=spec.get("config"), family=spec.get("family"), source_label=label)
    seconds = round(time.perf_counter() - started, 3)
    _write_record(folder, {"fingerprint": completed(spec["fingerprint"], spec["source"]), "seconds": seconds,
                           "source_metadata": _source_metadata(source)})
    return {"folder": str(folder), "files": [w.path for w in result.written], "seconds": seconds}


def _source_metadata(source: Path) -> dict:
    """The source header's model-card fields (modelspec.*, license), for `publish`."""
    from ckptkit.formats import open_checkpoint

    try:
        with open_checkpoint(source) as ckpt:
            meta = dict(getattr(ckpt, "metadata", None) or {})
    except CkptError:
        return {}
    return {k: v for k, v in meta.items() if isinstance(v, str) and (k.startswith("modelspec.") or k in
                                                                     ("license", "base_model"))}


def run_variant(spec: dict, progress=None) -> dict:
    """spec: VariantJob.spec(). Returns the job's summary (also the body of build.json)."""
    folder = Path(spec["folder"])
    with claimed(folder):
        return _variant(spec, folder, progress)


def _variant(spec: dict, folder: Path, progress) -> dict:
    from ckptkit import pipeline
    from ckptkit.build.recipe import Variant
    from ckptkit.verify import VerifyOptions, run_verify
    from ckptkit.verify.report import write_report_dir

    split = Path(spec["split"])
    (folder / BUILD_RECORD).unlink(missing_ok=True)  # until this job ends, the folder is not current
    v = dict(spec["variant"])
    variant = Variant(v["name"], v["to"], v["type"], v["client"], dict(v["components"]),
                      tuple(tuple(r) for r in v["rules"]), v["layout"], v["imatrix"], v["force_vae"], v["thresholds"])
    timings = {}
    fingerprint = completed(spec["fingerprint"], spec["source"])
    started = time.perf_counter()
    result = pipeline.quantize(split, folder, variant.policy(), force=True, workers=spec.get("workers", 1),
                               progress=progress, config=spec.get("config"), family=spec.get("family"),
                               source_label=_relative_to(folder), manifest_extra={"build": fingerprint})
    timings["quantize"] = round(time.perf_counter() - started, 3)
    ver = spec["verify"]
    opts = VerifyOptions(against=str(split), onestep=ver["onestep"], device=ver["device"], dtype=ver["dtype"],
                         resolution=ver["resolution"], seed=ver["seed"], overrides=ver["thresholds"],
                         family=spec.get("family"), config=spec.get("config"))
    started = time.perf_counter()
    report = run_verify(folder, opts)
    write_report_dir(report, folder / REPORT_DIR)
    timings["verify"] = round(time.perf_counter() - started, 3)
    failed = [r for r in report.results if r.passed is False]
    record = {
        "key": spec["key"],
        "fingerprint": fingerprint,
        "license": spec.get("license"),
        "files": {w.path: {"sha256": w.sha256, "bytes": w.bytes, "component": w.component} for w in result.written},
        "notes": list(result.plan.notes),
        "verify": {"passed": report.passed, "status": report.status, "exit_code": report.exit_code,
                   "checks": len(report.results), "failed": [" ".join(str(x) for x in (r.check, r.component, r.metric) if x) for r in failed],
                   "report": f"{REPORT_DIR}/report.json",
                   "image": f"{REPORT_DIR}/onestep.png" if (folder / REPORT_DIR / "onestep.png").exists() else None},
        "timings": timings,
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},  # where it ran (a Ray cluster has many)
    }
    _write_record(folder, record)
    return record
