"""`ckptkit publish DIR`: validate a component set, write its model card, upload it.

Validation: the set's stored verify report is used when it is fresh: it passed, and the files on
disk have exactly the sha256 that the build record and the manifest give (read again now).
Otherwise verify runs (against `--against`, or the build's split beside the set) and writes its
report into DIR/verify. A set that does not pass is not published (exit 1).

Upload (`--push REPO_ID`) goes through huggingface_hub's `HfApi.upload_folder`, with exactly the
files listed by `upload_list` (the components, ckptkit.json, README.md, the one-step image), and
only after validation passed; `--dry-run` lists them and writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.build.plan import BUILD_RECORD, REPORT_DIR, SPLIT, files_intact, read_record
from ckptkit.errors import CkptError

CARD = "README.md"
IMAGE = f"{REPORT_DIR}/onestep.png"
LICENSE_KEYS = ("modelspec.license", "license")
BASE_MODEL_KEYS = ("modelspec.base_model", "base_model")


@dataclass
class PublishResult:
    folder: Path
    validated: str  # "stored report" | "verified now"
    passed: bool
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes) to upload
    card: str = ""
    url: str | None = None
    exit_code: int = 0

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "validated": self.validated, "passed": self.passed,
                "files": [{"path": p, "bytes": n} for p, n in self.files], "url": self.url,
                "exit_code": self.exit_code}


def _fresh(folder: Path, manifest: dict) -> tuple[dict | None, str]:
    """The stored report when it is fresh for the files as they are now, else (None, why)."""
    record = read_record(folder)
    try:
        report = json.loads((folder / REPORT_DIR / "report.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None, "no stored verify report"
    if record is None:
        return None, f"no {BUILD_RECORD} pins the files the report was made for"
    if not report.get("passed") or not (record.get("verify") or {}).get("passed"):
        return None, "the stored report did not pass"
    files = record.get("files") or {}
    listed = {c["file"]: c.get("sha256") for c in manifest["components"].values()}
    if set(files) != set(listed):
        return None, "the build record and the manifest list different files"
    if any(files[name].get("sha256") != sha for name, sha in listed.items()):
        return None, "the build record and the manifest give different hashes"
    broken = files_intact(folder)  # every listed file read again against the manifest's sha256
    if broken:
        return None, f"the files changed since it was verified ({broken})"
    return report, ""


def _source_metadata(folder: Path) -> dict:
    """What the build recorded of the source (split/build.json), for the card's license and base model."""
    record = read_record(folder.parent / SPLIT) or {}
    return record.get("source_metadata") or {}


def upload_list(folder: Path, manifest: dict) -> list[str]:
    files = [c["file"] for c in manifest["components"].values()] + ["ckptkit.json", CARD]
    if (folder / IMAGE).exists():
        files.append(IMAGE)
    return files


def publish(folder, *, against: str | None = None, license: str | None = None, base_model: str | None = None,
            title: str | None = None, push: str | None = None, dry_run: bool = False, api=None,
            say=None) -> PublishResult:
    from ckptkit import __version__
    from ckptkit.engine.manifest import read_manifest
    from ckptkit.formats.atomic import atomic_write
    from ckptkit.publish.card import render

    say = say or (lambda _m: None)
    folder = Path(folder)
    manifest = read_manifest(folder, check_files=False) if folder.is_dir() else None
    if manifest is None:
        raise CkptError(f"{folder}: not a component set (no ckptkit.json); make one with split, quantize or build")
    report, why = _fresh(folder, manifest)
    validated = "stored report"
    if report is None:
        reference = against or (str(folder.parent / SPLIT) if (folder.parent / SPLIT / "ckptkit.json").exists()
                                else None)
        if reference is None:
            raise CkptError(f"{folder}: {why}, and no reference to verify against: give --against REF")
        say(f"{folder}: {why}; verifying against {reference}")
        from ckptkit.verify import VerifyOptions, run_verify
        from ckptkit.verify.report import write_report_dir

        verdict = run_verify(folder, VerifyOptions(against=reference))
        if not dry_run:
            write_report_dir(verdict, folder / REPORT_DIR)
        report, validated = json.loads(json.dumps(verdict.to_json(), default=str)), "verified now"
    record = read_record(folder) or {}
    source = _source_metadata(folder)
    meta = {"repo_id": push, "tool": f"ckptkit {__version__}", "title": title,
            "license": license or record.get("license") or next((source[k] for k in LICENSE_KEYS if source.get(k)),
                                                                None),
            "base_model": base_model or next((source[k] for k in BASE_MODEL_KEYS if source.get(k)), None),
            "image": IMAGE if (folder / IMAGE).exists() else None}
    card = render(manifest, report, meta)
    files = upload_list(folder, manifest)
    result = PublishResult(folder, validated, bool(report.get("passed")), card=card)
    if not result.passed:  # (a set that failed may lack files: nothing is listed)
        result.exit_code = 1
        return result
    result.files = [(f, len(card.encode()) if f == CARD else (folder / f).stat().st_size) for f in files]
    if dry_run:
        return result
    with atomic_write(folder / CARD) as fh:
        fh.write(card.encode("utf-8"))
    if push:
        if api is None:
            try:
                from huggingface_hub import HfApi
            except ImportError:
                raise CkptError("--push needs huggingface_hub: pip install 'ckptkit[publish]'") from None
            api = HfApi()
        api.create_repo(repo_id=push, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=push, repo_type="model", allow_patterns=files,
                                 commit_message=f"ckptkit publish: {manifest.get('family')} "
                                                f"({', '.join(sorted({f for f in files}))[:200]})")
        result.url = str(getattr(info, "commit_url", None) or info)
    return result
