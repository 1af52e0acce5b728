"""`ckptkit demo`: the main job on an embedded default, a small synthetic bundle."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ckptkit.errors import CkptError


def run_demo(out_dir: str | None, fixture: str = "sdxl", echo: Callable[[str], None] | None = print) -> dict:
    from ckptkit.fixtures.factory import FIXTURES, write_bundle
    from ckptkit.inspect import inspect_checkpoint
    from ckptkit.render import inspect_report

    if fixture not in FIXTURES:
        raise CkptError(f"unknown demo fixture {fixture!r}; choose one of {', '.join(FIXTURES)}")
    say = echo or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="ckptkit-demo-") as tmp:
        root = Path(out_dir) if out_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bundle = root / f"{fixture}_synthetic.safetensors"
        say(f"[1/2] building a synthetic {fixture} bundle (tiny random weights, real layout) -> {bundle}")
        write_bundle(fixture, bundle)
        say("[2/2] inspecting it")
        report = inspect_checkpoint(bundle, scan=True)
        say(inspect_report(report))
        ok = report.family == FIXTURES[fixture].family and report.variant == FIXTURES[fixture].variant
        say(f"demo: {'OK' if ok else 'FAILED'}: detected {report.family}/{report.variant}")
        if not ok:
            raise CkptError(f"demo detected {report.family}/{report.variant}, expected {fixture}")
        return {"bundle": str(bundle) if out_dir else None, "inspect": report.to_json(), "ok": ok}
