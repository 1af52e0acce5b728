"""`ckptkit demo`: the main job on an embedded default. A synthetic bundle in a real layout (SDXL /
SDXL-Turbo by default: tiny random weights, released tensor names) is built, inspected, and made
into two variants by a recipe, as `ckptkit build` does for real checkpoints: Q8_0, and Q4_K_M with
the text encoders asked Q8_0, each verified against the split with the 1-step check and given its
model card. The folder is kept (default ./ckptkit-demo) so the reports, images and cards can be
opened; a second run reuses what is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ckptkit.errors import CkptError

DEFAULT_OUT = "ckptkit-demo"


def demo_recipe(bundle_name: str, text_encoders: list[str]) -> str:
    encoders = ", ".join(f'{n} = "q8_0"' for n in text_encoders)
    return f'''# ckptkit demo: two variants of one synthetic checkpoint (see `ckptkit build --help`)
out = "sets"
sources = ["{bundle_name}"]

[[variant]]
name = "Q8_0"
type = "q8_0"

[[variant]]
name = "Q4_K_M"
type = "q4_k_m"
components = {{ {encoders} }}

[verify]
onestep = true
'''


def run_demo(out_dir: str | None, fixture: str = "sdxl", echo: Callable[[str], None] | None = print) -> dict:
    from ckptkit.build.commands import render_result
    from ckptkit.build.recipe import load_recipe
    from ckptkit.build.run import run_build
    from ckptkit.fixtures.factory import FIXTURES, write_bundle
    from ckptkit.inspect import inspect_checkpoint
    from ckptkit.publish.publish import CARD, publish
    from ckptkit.render import inspect_report
    from ckptkit.verify.report import from_json, render

    if fixture not in FIXTURES:
        raise CkptError(f"unknown demo fixture {fixture!r}; choose one of {', '.join(FIXTURES)}")
    say = echo or (lambda _msg: None)
    root = Path(out_dir or DEFAULT_OUT).resolve()
    root.mkdir(parents=True, exist_ok=True)
    bundle = root / f"{fixture}_synthetic.safetensors"
    if not bundle.exists():
        say(f"[1/4] build a synthetic {fixture} bundle (tiny random weights, the released names) -> {bundle}")
        write_bundle(fixture, bundle)
    else:
        say(f"[1/4] synthetic {fixture} bundle: {bundle} (kept from an earlier run)")
    say("[2/4] inspect")
    report = inspect_checkpoint(bundle, scan=True)
    say(inspect_report(report))
    expected = (FIXTURES[fixture].family, FIXTURES[fixture].variant)
    if (report.family, report.variant) != expected:
        raise CkptError(f"demo detected {report.family}/{report.variant}, expected {expected}")
    encoders = [c.name for c in report.components if c.role == "text_encoder"]
    recipe_path = root / "demo.toml"
    recipe_path.write_text(demo_recipe(bundle.name, encoders), "utf-8")
    say(f"[3/4] ckptkit build {recipe_path}: split once; Q8_0, and Q4_K_M with "
        f"{', '.join(encoders) or 'no text encoders'} asked Q8_0; each verified with the 1-step check")
    recipe = load_recipe(recipe_path)
    result = run_build(recipe, say=lambda m: say(f"  {m}"))
    for job in result.plan.jobs:
        for note in (result.results.get(job.key) or {}).get("notes", []):
            say(f"  {job.key} note: {note}")
    say("[4/4] verify tables and model cards")
    cards = {}
    for job in result.plan.jobs:
        record = result.results.get(job.key) or {}
        if "error" in record:
            continue
        published = publish(job.folder, license="other", title=f"{fixture} synthetic demo, {job.variant.name}")
        cards[job.key] = str(job.folder / CARD)
        say("")
        say(f"== {job.key}: {'PASS' if published.passed else 'FAIL'}")
        say(render(from_json(json.loads((job.folder / "verify" / "report.json").read_text("utf-8")))))
    say("")
    say(render_result(result))
    say("")
    say("where to look:")
    for job in result.plan.jobs:
        say(f"  {job.key}: {job.folder}")
        for rel in ("verify/report.md", "verify/onestep.png", CARD):
            if (job.folder / rel).exists():
                say(f"    {job.folder / rel}")
    say(f"demo: {'OK' if result.exit_code == 0 else 'FAILED'} (recipe {recipe_path}; remove {root} when done)")
    if result.exit_code:
        raise CkptError("demo: a variant did not pass verify (see the tables above)")
    return {"out": str(root), "recipe": str(recipe_path), "inspect": report.to_json(), "build": result.to_json(),
            "cards": cards, "ok": result.exit_code == 0}

