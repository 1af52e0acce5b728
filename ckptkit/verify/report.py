"""Rendering a VerifyReport: the terminal table, and `--report DIR` (report.json, report.md,
onestep.png)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ckptkit.formats.atomic import atomic_write
from ckptkit.formats.files import printable
from ckptkit.render import table


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "-" if value is None else str(value)


def verdict(passed) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def from_json(data: dict):
    """A stored report.json as an object `render` and `markdown` take (results, tables, timings ...)."""
    from types import SimpleNamespace

    from ckptkit.verify.result import CheckResult

    fields = {k: data.get(k) for k in ("path", "against", "family", "variant", "passed", "status", "message")}
    return SimpleNamespace(**fields, results=[CheckResult(**r) for r in data.get("results", [])],
                           tables=data.get("tables") or {}, timings=data.get("timings") or {}, onestep=None,
                           images=None)


def render(report) -> str:
    rows = [[r.check, r.component or "-", r.metric, _fmt(r.value), _fmt(r.threshold), verdict(r.passed),
             (r.detail[:90] + "...") if len(r.detail) > 93 else r.detail] for r in report.results]
    lines = [f"verify {report.path}" + (f" against {report.against}" if report.against else ""),
             f"family: {report.family or 'unknown'}" + (f", variant {report.variant}" if report.variant else ""),
             table(rows, ["check", "component", "metric", "value", "threshold", "result", "detail"])]
    worst = report.tables.get("worst_tensors") or []
    if worst:
        lines.append("worst tensors (relative RMS error):")
        lines += [f"  {w['component']}:{printable(w['tensor'])}  rel_rms {w['rel_rms']:.4g}  cosine {w['cosine']:.6f}  "
                  f"max_abs {w['max_abs']:.4g}" for w in worst[:5]]
    failed = sum(1 for r in report.results if r.passed is False)
    lines.append(f"{'PASS' if report.passed else 'FAIL'}: {len(report.results)} checks, {failed} failed, "
                 f"{report.timings.get('total', 0):.2f} s")
    return "\n".join(lines)


def markdown(report) -> str:
    head = "| check | component | metric | value | threshold | result | detail |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {r.check} | {r.component or '-'} | {r.metric} | {_fmt(r.value)} | {_fmt(r.threshold)} | "
                   f"{verdict(r.passed)} | {r.detail.replace('|', '/')} |\n" for r in report.results)
    worst = report.tables.get("worst_tensors") or []
    wt = ""
    if worst:
        wt = "\n## Worst tensors\n\n| component | tensor | rel RMS | cosine | max abs |\n|---|---|---|---|---|\n" + "".join(
            f"| {w['component']} | {w['tensor']} | {w['rel_rms']:.4g} | {w['cosine']:.6f} | {w['max_abs']:.4g} |\n"
            for w in worst)
    img = ("\n## One step\n\n![1-step check, a row per stage: reference | candidate | difference | heat map]"
           "(onestep.png)\n") if _images(report) is not None else ""
    return (f"# ckptkit verify: {'PASS' if report.passed else 'FAIL'}\n\n`{report.path}`"
            + (f" against `{report.against}`" if report.against else "")
            + f"\n\nfamily: {report.family or 'unknown'}, variant: {report.variant or '-'}\n\n{head}{body}{wt}{img}"
            + f"\ntotal time: {report.timings.get('total', 0):.2f} s\n")


def _images(report):
    """The rows of onestep.png (report.images is the 1-step check's OneStepResult), or None."""
    return getattr(report.images, "images", None)


def write_report_dir(report, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("report.json", json.dumps(report.to_json(), indent=2, default=str) + "\n"),
                       ("report.md", markdown(report))):
        with atomic_write(folder / name) as fh:
            fh.write(text.encode("utf-8"))
        written.append(folder / name)
    images = _images(report)
    if images is not None:
        from ckptkit.verify.images import save_onestep_png

        images.verdict = report.passed
        written.append(save_onestep_png(images, folder / "onestep.png"))
    return written
