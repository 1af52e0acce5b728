"""Library entry points: open, detect, plan, execute, record. The CLI calls only these."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ckptkit.engine.execute import WrittenFile, execute
from ckptkit.engine.manifest import SourceHasher, build_manifest, write_manifest
from ckptkit.engine.plan import Plan
from ckptkit.convert.split import SplitOptions, plan_split
from ckptkit.errors import CkptError, Unscanned
from ckptkit.families.detect import detect
from ckptkit.formats import open_checkpoint
from ckptkit.formats.hashing import remember_sha256
from ckptkit.outputs import output_dir, output_file

Progress = Callable[[int, str], Callable[[int], None]]  # (total bytes, label) -> update(n)


@dataclass
class RunResult:
    plan: Plan
    written: list[WrittenFile] = field(default_factory=list)
    manifest: dict | None = None
    out_dir: str | None = None
    notes: list[str] = field(default_factory=list)  # what the run did besides the plan (stale files removed)


def planned_bytes(plan: Plan) -> int:
    return sum(t.nbytes for o in plan.outputs for t in o.tensors)


def inputs_of(ckpt, *extra) -> list[Path]:
    """Every path a run reads (the checkpoint's files and folders, plus extra ones given): no
    output may be, contain or lie inside one of them (outputs.check_output)."""
    return [Path(p) for p in [*ckpt.paths, *extra] if p]


def run_plan(plan: Plan, ckpt, out_dir: Path, workers: int, progress: Progress | None,
             allow_overflow: bool = False, manifest_extra: dict | None = None, store: str | None = None, *,
             force: bool = False, inputs: list[Path] = (), before_manifest: Callable[[Path, dict], dict] | None = None,
             source_label: Callable[[str], str] | None = None) -> RunResult:
    """Execute a plan into a folder through the staging path (outputs.output_dir): the component
    files, then `before_manifest(stage, source hashes)` (extra files and manifest fields), then the
    manifest; everything appears under its final name at the end or not at all. `source_label`
    says how the manifest records a source path (default: as given; `build` records paths that do
    not depend on where its output folder is)."""
    extra = dict(manifest_extra or {})
    reused: list[WrittenFile] = []
    notes: list[str] = []
    with SourceHasher(list(ckpt.paths), ckpt, plan) as hasher, \
            output_dir(out_dir, inputs or inputs_of(ckpt), force, notes) as stage:
        if store:
            plan, reused, extra["store"] = _reuse_from_store(plan, ckpt, stage, Path(store), workers)
        update = progress(planned_bytes(plan), plan.kind) if progress else None
        written = execute(plan, ckpt, stage, workers=workers, progress=update, allow_overflow=allow_overflow)
        if store:
            for w in written:
                _link(stage / w.path, _store_path(Path(store), w.sha256), into_store=True)
        written = reused + written
        sources = hasher.join()
        if source_label is not None:
            plan.source = source_label(plan.source)
            sources = {source_label(k): v for k, v in sources.items()}
        if before_manifest is not None:
            extra.update(before_manifest(stage, sources))
        manifest = build_manifest(plan, written, sources, extra)
        write_manifest(stage, manifest)
    remember_outputs(out_dir, written)
    return RunResult(plan, written, manifest, str(out_dir), notes)


def run_plan_to_file(plan: Plan, ckpt, out: Path, workers: int, progress: Progress | None, *, force: bool = False,
                     allow_overflow: bool = False, inputs: list[Path] = ()) -> RunResult:
    """Execute a plan whose one output is the file `out` (merge, convert to original, quantize to
    one file): checked and written atomically (outputs.output_file). A file planned beside it (a
    Qwen2.5-VL text encoder's mmproj GGUF) is checked the same way."""
    from ckptkit.outputs import check_output

    notes: list[str] = []
    for beside in (out.parent / o.path for o in plan.outputs if o.path != out.name):
        check_output(beside, inputs or inputs_of(ckpt), "file")
        if beside.exists() and not force:
            raise CkptError(f"{beside}: exists (use --force to replace it)")
    with output_file(out, inputs or inputs_of(ckpt), force, notes) as folder:
        update = progress(planned_bytes(plan), plan.kind) if progress else None
        written = execute(plan, ckpt, folder, workers=workers, progress=update, allow_overflow=allow_overflow)
    remember_outputs(folder, written)
    return RunResult(plan, written, None, str(folder), notes)


def remember_outputs(out_dir: Path, written: list[WrittenFile]) -> None:
    """Put the hashes of the files just written in the hash cache: a later run that reads this
    component set as its source does not hash it again."""
    for w in written:
        path = out_dir / w.path
        if path.is_file():
            remember_sha256(path, w.sha256)


def _store_path(store: Path, digest: str) -> Path:
    return store / "sha256" / digest[:2] / f"{digest}.safetensors"


def _link(path: Path, stored: Path, into_store: bool) -> str:
    """Hardlink `path` and `stored` together; where hardlinks are impossible (another filesystem),
    copy into the store, or leave a reference (the manifest's `stored_at`) instead of a copy."""
    if into_store:
        if stored.exists():
            return "exists"
        stored.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, stored)
        except OSError:
            shutil.copy2(path, stored)
        return "stored"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(stored, path)
        return "hardlink"
    except OSError:
        return "reference"


def _reuse_from_store(plan: Plan, ckpt, out_dir: Path, store: Path, workers: int):
    """Outputs whose content is already stored are linked, not written: returns the plan of what
    is left to write, the reused files and the store summary for the manifest."""
    from dataclasses import replace

    from ckptkit.engine.execute import describe_file, output_digest

    left, reused, saved, refs = [], [], 0, {}
    for out in plan.outputs:
        digest = output_digest(out, ckpt, workers)
        stored = _store_path(store, digest)
        if not stored.exists():
            left.append(out)
            continue
        how = _link(out_dir / out.path, stored, into_store=False)
        reused.append(describe_file(out, stored, digest))
        saved += stored.stat().st_size
        refs[out.component or out.path] = {"sha256": digest, "stored_at": str(stored), "how": how}
    summary = {"path": str(store), "reused": len(reused), "bytes_saved": saved, "links": refs}
    return replace(plan, outputs=left), reused, summary


def given(ckpt, config: str | os.PathLike | None = None, family: str | None = None):
    """Attach what the user told about an opened checkpoint: `--config FILE|DIR` (every config
    resolution on it sees it, convert/configs.py) and `--family NAME` (every detection on it reads
    it as that family, families/detect.py)."""
    if config is not None:
        from ckptkit.convert.configs import UserConfig

        ckpt.user_config = UserConfig.load(config)
    if family is not None:
        from ckptkit.families import get_family

        ckpt.family_override = get_family(family).name
    return ckpt


def values(ckpt, dtype: str = "keep"):
    """The checkpoint as values, for a command that computes with them (a cast, the diffusers
    layout, quantization): a quantized safetensors file (ComfyUI's scaled fp8, ...) is read as
    weight x scale, dequantized in `dtype` (keep: the file's own compute dtype), and a scheme this
    reader does not know is refused (formats/scaled.py). A byte-preserving copy reads the file as
    stored instead, and keeps each scale with its weight."""
    from ckptkit.engine.ops import CAST_TARGETS
    from ckptkit.formats.scaled import dequantizing

    return dequantizing(ckpt, CAST_TARGETS.get(dtype))


def _open_values(source):
    ckpt = open_checkpoint(source)
    try:
        return values(ckpt)
    except BaseException:
        ckpt.close()
        raise


def split(source: str | os.PathLike, out_dir: str | os.PathLike, opts: SplitOptions, *, force: bool = False,
          dry_run: bool = False, workers: int = 1, progress: Progress | None = None, allow_overflow: bool = False,
          tokenizer_from: str | None = None, store: str | None = None, config: str | None = None,
          family: str | None = None, source_label: Callable[[str], str] | None = None) -> RunResult:
    out_dir = Path(out_dir)
    with open_checkpoint(source) as ckpt:
        given(ckpt, config, family)
        if opts.dtype != "keep" or opts.layout == "diffusers":
            ckpt = values(ckpt, opts.dtype)
        det = detect(ckpt)
        plan = plan_split(ckpt, det, opts)
        folders = _tokenizer_folders(plan, tokenizer_from)
        if dry_run:
            return RunResult(plan)

        def tokenizers(stage: Path, _sources) -> dict:
            return {"tokenizer": _copy_tokenizers(plan, stage, tokenizer_from, folders)}

        return run_plan(plan, ckpt, out_dir, workers, progress, allow_overflow, None, store, force=force,
                        inputs=inputs_of(ckpt, tokenizer_from, source), before_manifest=tokenizers,
                        source_label=source_label)


def _tokenizer_folders(plan: Plan, tokenizer_from: str | None) -> list[Path]:
    if plan.info.get("layout") != "diffusers" or not tokenizer_from:
        return []
    src = Path(tokenizer_from)
    folders = sorted(p for p in src.glob("tokenizer*") if p.is_dir()) if src.is_dir() else []
    if not folders:
        raise CkptError(f"{src}: no tokenizer*/ folders to copy")
    return folders


def _copy_tokenizers(plan: Plan, stage: Path, tokenizer_from: str | None, folders: list[Path]) -> str:
    """Tokenizer files cannot be derived from weights: copy `tokenizer*` folders (into the staging
    folder, like everything a run writes) when given. Only regular files are copied."""
    if plan.info.get("layout") != "diffusers":
        return "not applicable"
    if not tokenizer_from:
        return "absent: pass --tokenizer-from DIR (a diffusers pipeline folder) to copy tokenizer files"
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                target = stage / folder.name / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
    return f"copied from {tokenizer_from}: {', '.join(p.name for p in folders)}"


def merge(folder: str | os.PathLike, output: str | os.PathLike, *, force: bool = False, dry_run: bool = False,
          workers: int = 1, progress: Progress | None = None, family: str | None = None,
          client: str | None = None) -> RunResult:
    """A component set -> one bundle: safetensors, or the GGUF bundle a client loads (`client`)."""
    from ckptkit.convert.merge import plan_merge

    from ckptkit.outputs import check_output

    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise CkptError(f"{folder}: not a directory")
    check_output(output, [folder], "file")
    if output.exists() and not force:
        raise CkptError(f"{output}: exists (use --force to replace it)")
    if family is not None:
        from ckptkit.families import get_family

        get_family(family)
    plan, ckpt = plan_merge(folder, output.name, family, client)
    with ckpt:
        if dry_run:
            return RunResult(plan)
        return run_plan_to_file(plan, ckpt, output, workers, progress, force=force, inputs=inputs_of(ckpt, folder))


def convert(source: str | os.PathLike, dest: str | os.PathLike, layout: str, *, dtype: str = "keep",
            force: bool = False, dry_run: bool = False, workers: int = 1, progress: Progress | None = None,
            allow_overflow: bool = False, config: str | None = None, family: str | None = None) -> RunResult:
    """Bundle -> diffusers folder (split), diffusers pipeline -> bundle (merge), or one component
    file <-> diffusers component folder."""
    from ckptkit.convert.convert import plan_convert_component

    dest = Path(dest)
    with open_checkpoint(source) as ckpt:
        given(ckpt, config, family)
        det = detect(ckpt)
        if det.form in ("bundle", "diffusers"):
            if layout == "diffusers" and det.form == "bundle":
                return split(source, dest, SplitOptions(layout="diffusers", dtype=dtype), force=force,
                             dry_run=dry_run, workers=workers, progress=progress, allow_overflow=allow_overflow,
                             config=config, family=family)
            if layout == "original" and det.form == "diffusers":
                return merge(source, dest, force=force, dry_run=dry_run, workers=workers, progress=progress, family=family)
            raise CkptError(f"{source}: is already a {det.form} in {det.names} names")
        if layout == "diffusers" or dtype != "keep":
            ckpt = values(ckpt, dtype)
            det = detect(ckpt)
        plan = plan_convert_component(ckpt, det, layout, dtype, dest.name)
        if dry_run:
            return RunResult(plan)
        inputs = inputs_of(ckpt, source)
        if layout == "diffusers":
            notes: list[str] = []
            with output_dir(dest, inputs, force, notes) as stage:
                update = progress(planned_bytes(plan), "convert") if progress else None
                written = execute(plan, ckpt, stage, workers=workers, progress=update, allow_overflow=allow_overflow)
            remember_outputs(dest, written)
            return RunResult(plan, written, None, str(dest), notes)
        return run_plan_to_file(plan, ckpt, dest, workers, progress, force=force, allow_overflow=allow_overflow,
                                inputs=inputs)


def quantize(source: str | os.PathLike, out: str | os.PathLike, policy, *, force: bool = False,
             dry_run: bool = False, workers: int = 1, progress: Progress | None = None, scan: bool = True,
             config: str | None = None, family: str | None = None,
             source_label: Callable[[str], str] | None = None, manifest_extra: dict | None = None) -> RunResult:
    """Quantize each component by its own policy. SOURCE is a bundle, a component set (any layout,
    with or without ckptkit.json), a diffusers folder or one component file (any format). `out` is
    a directory (component set + manifest), or a file when the source is a single component and
    `out` ends in .gguf/.safetensors."""
    from ckptkit.quant.plan import open_component_set_source, plan_quantize, source_from_detection

    out, src_path = Path(out), Path(source)
    single = out.suffix in (".gguf", ".safetensors")
    if src_path.is_dir() and not (src_path / "model_index.json").exists() and not (src_path / "config.json").exists():
        if family is not None:
            from ckptkit.families import get_family

            get_family(family)
        ckpt, src = open_component_set_source(src_path, family)
    else:
        ckpt, src = open_checkpoint(source), None
    try:
        ckpt = values(ckpt)  # quantizers take values: weight x scale for a scaled fp8 file
        if src is None:
            given(ckpt, family=family)
            src = source_from_detection(ckpt, detect(ckpt))
    except BaseException:
        ckpt.close()
        raise
    with ckpt:
        given(ckpt, config)  # --family is applied above

        def planned(scanned: bool):
            bar = progress(ckpt.total_bytes, "scan") if progress and scanned else None
            return plan_quantize(ckpt, src, policy, out.name if single else None, scan=scanned, progress=bar)

        # The scan (non-finite values, fp16 overflow) reads every tensor once more before writing.
        # A run bets that it changes nothing and writes checking the same conditions; only when one
        # holds does it scan, plan again and write again (outputs appear atomically, so the first
        # attempt leaves nothing). --dry-run shows the scanned plan.
        plan = planned(scan and dry_run)
        if dry_run:
            return RunResult(plan)
        plan.deferred_scan = scan
        inputs = inputs_of(ckpt, source)

        def write(plan):
            if single:
                return run_plan_to_file(plan, ckpt, out, workers, progress, force=force, inputs=inputs)
            return run_plan(plan, ckpt, out, workers, progress, manifest_extra=manifest_extra, force=force,
                            inputs=inputs, source_label=source_label)

        try:
            return write(plan)
        except Unscanned:
            if not scan:
                raise
        return write(planned(True))


def trigflow(source: str | os.PathLike, out_dir: str | os.PathLike, opts=None, *, force: bool = False,
             dry_run: bool = False, workers: int = 1, progress: Progress | None = None,
             config: str | None = None, family: str | None = None) -> RunResult:
    """A Sana flow model -> its TrigFlow form (convert/trigflow.py); the manifest's `trigflow` section
    records the transform. A source already in TrigFlow form gives a plan with no outputs (nothing written)."""
    from ckptkit.convert.trigflow import TrigFlowOptions, plan_trigflow, transform_record

    out_dir = Path(out_dir)
    with _open_values(source) as ckpt:
        given(ckpt, config, family)
        plan = plan_trigflow(ckpt, detect(ckpt), opts or TrigFlowOptions())
        if dry_run or not plan.outputs:
            return RunResult(plan)
        return run_plan(plan, ckpt, out_dir, workers, progress, force=force, inputs=inputs_of(ckpt, source),
                        before_manifest=lambda _stage, sources: {"trigflow": transform_record(plan, sources)})
