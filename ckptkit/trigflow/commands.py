"""The `trigflow` and `sample` commands, added to the `ckptkit` group by cli.py through `register`.

cli.py hands over its shared helpers instead of this module importing them: under `python -m ckptkit.cli`
the running module is `__main__`, and importing `ckptkit.cli` from here would load it a second time, in a
circle back to this module.
"""

from __future__ import annotations

import json
import sys

import click

from ckptkit.cli_options import DType
from ckptkit.errors import CkptError


def register(group: click.Group, run_options, render_run, bar_factory) -> None:
    group.add_command(_trigflow_command(run_options, render_run, bar_factory))
    group.add_command(sample_cmd)


def _trigflow_command(run_options, render_run, bar_factory) -> click.Command:
    fn = run_options(_trigflow(render_run, bar_factory))
    for option in reversed(TRIGFLOW_OPTIONS):
        fn = option(fn)
    return click.command("trigflow")(fn)


TRIGFLOW_OPTIONS = [
    click.argument("source", type=click.Path(path_type=str)),
    click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=str), help="Output directory."),
    click.option("--layout", type=click.Choice(["diffusers", "original"]), default="diffusers", show_default=True,
                 help="diffusers: a SanaSprintPipeline-style folder; original: NVlabs names (cfg_embedder.*)."),
    click.option("--time-scale", type=float, default=None,
                 help="What the source's time embedding sees per unit of flow time t: 1000 for original Sana "
                      "(the default when nothing tells), 1 for a dense-time Sprint teacher."),
    click.option("--with-logvar", is_flag=True, help="Add the sCM training head logvar_linear (--layout original)."),
    click.option("--dtype", type=DType("keep", "fp16", "bf16", "fp32"), default="keep", show_default=True),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the guidance embedder's input layer (its output layer is zero, so the model's "
                      "function never depends on it)."),
    click.option("--config", "config", type=click.Path(path_type=str), default=None,
                 help="The transformer's config.json (or a diffusers folder): head widths the weights cannot decide."),
    click.option("--family", "family", default=None, metavar="NAME",
                 help="Read the source as this family instead of detecting it."),
]


def _trigflow(render_run, bar_factory):
    def trigflow(source, out_dir, layout, time_scale, with_logvar, dtype, seed, config, family, dry_run, as_json,
                 force, workers):
        """Remap a Sana flow-matching transformer to the TrigFlow (SANA-Sprint) form, function-preserving."""
        from ckptkit import pipeline
        from ckptkit.convert.trigflow import TrigFlowOptions

        opts = TrigFlowOptions(layout=layout, time_scale=time_scale, with_logvar=with_logvar, dtype=dtype, seed=seed)
        result = pipeline.trigflow(source, out_dir, opts, force=force, dry_run=dry_run, workers=workers,
                                   progress=bar_factory(sys.stderr.isatty() and not as_json), config=config,
                                   family=family)
        for warning in result.plan.info.get("warnings", []):
            click.echo(f"ckptkit: warning: {warning}", err=True)
        if result.plan.info.get("already_trigflow"):
            click.echo(json.dumps({"plan": result.plan.to_json()}, indent=2) if as_json else result.plan.notes[0])
            return
        render_run(result, as_json)

    return trigflow


def _schedule(value: str):
    """"auto" | "paper" | "linear" | comma-separated angles."""
    if value in ("auto", "paper", "linear"):
        return value
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise CkptError(f"--schedule takes auto, paper, linear or comma-separated angles, got {value!r}") from None


@click.command("sample")
@click.argument("model", type=click.Path(path_type=str))
@click.option("-o", "--out", required=True, type=click.Path(path_type=str), help="The PNG to write.")
@click.option("--steps", type=click.IntRange(1, 1000), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--schedule", default="auto", show_default=True,
              help="auto (the paper's for 1/2/4 steps, else linear), paper, linear, or angles 'S0,S1,...,0'.")
@click.option("--prompt", default="", help="Caption (needs the model set's text encoders; see README).")
@click.option("--height", type=int, default=None, help="Image height in pixels (default: the model's).")
@click.option("--width", type=int, default=None, help="Image width in pixels (default: the model's).")
@click.option("--guidance", "guidance_scale", type=float, default=4.5, show_default=True,
              help="Guidance scale for models with a guidance input (Sana-Sprint form, FLUX.1-dev).")
@click.option("--time-scale", type=float, default=None,
              help="Override the timestep per unit of flow time the network embeds (default: its config/manifest).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--dtype", type=DType("fp32", "bf16", "fp16"), default="fp32", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config", type=click.Path(path_type=str), default=None,
              help="A config.json, or a folder of <component>/config.json: values the weights cannot decide.")
@click.option("--family", "family", default=None, metavar="NAME",
              help="Read the model as this family instead of detecting it.")
def sample_cmd(model, out, steps, seed, schedule, prompt, height, width, guidance_scale, time_scale, device, dtype,
               force, as_json, config, family):
    """Sample a flow-matching or TrigFlow model (Sana, SD3, FLUX.1) in 1..N sCM steps and write a PNG."""
    from ckptkit.trigflow.run import sample_image

    result = sample_image(model, out, steps=steps, seed=seed, schedule=_schedule(schedule), prompt=prompt,
                          height=height, width=width, device=device, dtype=dtype, guidance_scale=guidance_scale,
                          time_scale=time_scale, force=force, config=config, family=family)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"wrote {result.path}  latent {list(result.latent_shape)}, {len(result.schedule) - 1} step(s) "
               f"{[round(s, 5) for s in result.schedule]}, time scale {result.time_scale:g}, {result.device}, "
               f"{result.seconds:.2f} s")
    click.echo(f"conditioning: {result.conditioning}; image: {result.output}")
