"""`ckptkit demo`: the main job on an embedded default, a small synthetic bundle:
build -> inspect -> split -> quantize -> verify against the source."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ckptkit.errors import CkptError


def run_demo(out_dir: str | None, fixture: str = "sdxl", echo: Callable[[str], None] | None = print,
             qtype: str = "q8_0", onestep: bool = True) -> dict:
    from ckptkit import pipeline
    from ckptkit.convert.split import SplitOptions
    from ckptkit.fixtures.factory import FIXTURES, write_bundle
    from ckptkit.inspect import inspect_checkpoint
    from ckptkit.quant.policy import Policy
    from ckptkit.render import inspect_report
    from ckptkit.verify import VerifyOptions, run_verify
    from ckptkit.verify.report import render, write_report_dir

    if fixture not in FIXTURES:
        raise CkptError(f"unknown demo fixture {fixture!r}; choose one of {', '.join(FIXTURES)}")
    say = echo or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="ckptkit-demo-") as tmp:
        root = Path(out_dir) if out_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        bundle = root / f"{fixture}_synthetic.safetensors"
        say(f"[1/5] build: a synthetic {fixture} bundle (tiny random weights, real layout) -> {bundle}")
        write_bundle(fixture, bundle)
        say("[2/5] inspect")
        report = inspect_checkpoint(bundle, scan=True)
        say(inspect_report(report))
        expected = (FIXTURES[fixture].family, FIXTURES[fixture].variant)
        if (report.family, report.variant) != expected:
            raise CkptError(f"demo detected {report.family}/{report.variant}, expected {expected}")
        split_dir = root / "split"
        say(f"[3/5] split --layout comfy -> {split_dir}")
        split = pipeline.split(bundle, split_dir, SplitOptions(layout="comfy"), force=True)
        for w in split.written:
            say(f"  {w.path}: {w.tensors} tensors, sha256 {w.sha256[:16]}")
        quant_dir = root / "quantized"
        text_encoders = [c for c, info in split.plan.info["components"].items() if info["role"] == "text_encoder"]
        policy = Policy(diffusion_model=qtype, components={name: qtype for name in text_encoders})
        say(f"[4/5] quantize for ComfyUI-GGUF: diffusion model and text encoders to {qtype}, VAE kept -> {quant_dir}")
        quant = pipeline.quantize(split_dir, quant_dir, policy, force=True)
        for w in quant.written:
            say(f"  {w.path}: {', '.join(f'{t} {n}' for t, n in sorted(w.dtypes.items()))}")
        for note in quant.plan.notes:  # e.g. CLIPs kept safetensors: the client loads none from GGUF
            say(f"  note: {note}")
        say(f"[5/5] verify {quant_dir.name} against the bundle" + (" (with the 1-step check)" if onestep else ""))
        verdict = run_verify(quant_dir, VerifyOptions(against=str(bundle), onestep=onestep))
        if out_dir:
            write_report_dir(verdict, root / "report")
        say(render(verdict))
        say(f"demo: {'OK' if verdict.passed else 'FAILED'}")
        if not verdict.passed:
            raise CkptError("demo: verification failed (see the table above)")
        return {"out": str(root) if out_dir else None, "inspect": report.to_json(),
                "split": [w.__dict__ for w in split.written], "quantize": [w.__dict__ for w in quant.written],
                "verify": verdict.to_json(), "ok": verdict.passed}
