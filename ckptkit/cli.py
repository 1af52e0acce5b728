"""The `ckptkit` command: parses options, calls one library function, renders the result.

User errors (CkptError) become one line on stderr and exit code 2; no tracebacks.
"""

from __future__ import annotations

import json
import sys

import click

from ckptkit import __version__
from ckptkit.errors import CkptError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptError as exc:
            click.echo(f"ckptkit: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ckptkit: interrupted", err=True)
            ctx.exit(130)


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not enabled, leave=False,
                file=sys.stderr)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckptkit")
def cli():
    """Inspect, split, convert, quantize and verify diffusion-model checkpoints."""


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--scan", is_flag=True, help="Stream every tensor and count NaN/Inf values.")
def inspect_cmd(path: str, as_json: bool, scan: bool):
    """Family, components, dtypes, junk and problems of a checkpoint (any format)."""
    from ckptkit.formats import open_checkpoint
    from ckptkit.inspect import inspect_checkpoint
    from ckptkit.render import inspect_report

    bar = None
    if scan:
        with open_checkpoint(path) as ckpt:
            total = ckpt.total_bytes
        bar = _progress(total, "scan", sys.stderr.isatty())
    report = inspect_checkpoint(path, scan=scan, progress=bar.update if bar else None)
    if bar:
        bar.close()
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else inspect_report(report))


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Keep the demo files here (default: a temporary folder, removed afterwards).")
@click.option("--family", default="sdxl", show_default=True, help="Which synthetic fixture to build.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(out_dir: str | None, family: str, as_json: bool):
    """Build a small synthetic bundle and run the pipeline on it."""
    from ckptkit.demo import run_demo

    result = run_demo(out_dir, family, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(result, indent=2))


def main() -> None:
    cli(prog_name="ckptkit")


if __name__ == "__main__":
    main()
