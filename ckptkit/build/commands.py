"""The `build` and `publish` commands, added to the `ckptkit` group by cli.py through `register`
(as trigflow/commands.py: cli.py hands over its helpers rather than being imported from here)."""

from __future__ import annotations

import json
import sys

import click

from ckptkit.cli_options import Size


def register(group: click.Group, bar_factory) -> None:
    group.add_command(_build_command(bar_factory))
    from ckptkit.publish.commands import publish_cmd

    group.add_command(publish_cmd)


def render_plan(plan) -> str:
    from ckptkit.units import human_bytes

    lines = [f"build {plan.recipe.path} -> {plan.recipe.out}"]
    for s in plan.splits:
        lines.append(f"  {s.source.name}: split {s.status} ({s.reason})")
    width = max((len(j.key) for j in plan.jobs), default=0)
    for j in plan.jobs:
        extra = (f"; {human_bytes(j.planned_bytes)} of files, planned peak {human_bytes(j.memory)} "
                 f"({j.memory_detail})") if j.status == "run" and j.memory else ""
        lines.append(f"  {j.key:<{width}}  {j.status:<6} {j.reason}{extra}")
    if plan.budget is not None:
        lines.append(f"memory budget: {human_bytes(plan.budget)} ({plan.budget_source})")
    return "\n".join(lines)


def render_result(result) -> str:
    from ckptkit.units import human_bytes

    rows = [("variant", "status", "verify", "files", "report")]
    for j in result.plan.jobs:
        record = result.results.get(j.key)
        if record is None:  # current: its stored record
            from ckptkit.build.plan import read_record

            record = read_record(j.folder) or {}
            status = "skipped"
        else:
            status = "built"
        if "error" in record:
            rows.append((j.key, "error", record["error"], "-", "-"))
            continue
        v = record.get("verify", {})
        verdict = "PASS" if v.get("passed") else "FAIL " + ", ".join(v.get("failed", [])[:3])
        files = record.get("files", {})
        size = human_bytes(sum(f["bytes"] for f in files.values())) if files else "-"
        report = str(j.folder / v["report"]) if v.get("report") else "-"
        rows.append((j.key, status, verdict.strip(), f"{len(files)} ({size})", report))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.append(f"build: {'OK' if result.exit_code == 0 else 'FAILED'} in {result.seconds:.1f} s "
               f"(exit {result.exit_code})")
    return "\n".join(out)


def _build_command(bar_factory) -> click.Command:
    @click.command("build")
    @click.argument("recipe", type=click.Path(path_type=str))
    @click.option("--dry-run", is_flag=True, help="Print the plan: what is current, what will run, planned sizes "
                                                  "and memory.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
                  help="Variants run at once (worker processes), within the memory budget.")
    @click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
                  help="Threads per job (reading and quantizing tensors).")
    @click.option("--memory-limit", type=Size(), metavar="SIZE",
                  help="Memory the jobs may take at once (default: what the system has available).")
    @click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                  help="Run the jobs as Ray tasks: on a local Ray instance, or the cluster at ADDRESS "
                       "(pip install 'ckptkit[ray]').")
    @click.option("-q", "--quiet", is_flag=True, help="No progress lines or bars.")
    def build_cmd(recipe, dry_run, as_json, jobs, workers, memory_limit, ray_address, quiet):
        """Make every variant of every source a recipe names: split each source once, quantize
        each variant from the split, verify it against the split, write its report. Sets that are
        current (same inputs, recipe entry and tool; files intact) are skipped. Exit 0 all passed,
        1 a variant did not pass verify, 2 bad recipe or a variant could not be made."""
        from ckptkit.build.recipe import load_recipe
        from ckptkit.build.run import run_build

        rec = load_recipe(recipe)
        chatty = not quiet and not as_json
        say = (lambda m: click.echo(m, err=True)) if chatty else None
        bars = bar_factory(sys.stderr.isatty() and chatty) if jobs == 1 and ray_address is None else None
        result = run_build(rec, jobs=jobs, workers=workers, memory_limit=memory_limit, dry_run=dry_run,
                           ray=ray_address, say=say, progress=bars)
        if as_json:
            click.echo(json.dumps(result.plan.to_json() if dry_run else result.to_json(), indent=2, default=str))
        else:
            click.echo(render_plan(result.plan) if dry_run else render_result(result))
        sys.exit(0 if dry_run else result.exit_code)

    return build_cmd
