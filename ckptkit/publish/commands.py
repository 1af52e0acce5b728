"""The `publish` command (registered by build/commands.py)."""

from __future__ import annotations

import json
import sys

import click


@click.command("publish")
@click.argument("folder", type=click.Path(file_okay=False, path_type=str))
@click.option("--against", type=click.Path(path_type=str),
              help="The unquantized reference, when the set has no fresh verify report (default: the build's split).")
@click.option("--license", "license_", metavar="ID", help="The card's license (default: the recipe's or the source's).")
@click.option("--base-model", metavar="REPO_ID", help="The card's base_model (default: from the source's metadata).")
@click.option("--title", help="The card's title.")
@click.option("--push", metavar="REPO_ID", help="Upload the set to this Hugging Face repository after it passed.")
@click.option("--dry-run", is_flag=True, help="List exactly what would be uploaded; write and upload nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def publish_cmd(folder, against, license_, base_model, title, push, dry_run, as_json):
    """Validate a component set (its stored verify report when fresh for the files' hashes, else
    verify now), write its model card README.md, and with --push upload it. Exit 0 published (or
    would be), 1 the set did not pass verify, 2 bad input."""
    from ckptkit.publish.publish import publish
    from ckptkit.units import human_bytes

    result = publish(folder, against=against, license=license_, base_model=base_model, title=title, push=push,
                     dry_run=dry_run, say=None if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(f"{result.folder}: {'PASS' if result.passed else 'FAIL'} ({result.validated})")
        if result.exit_code:
            click.echo("ckptkit: publish: the set did not pass verify; nothing written or uploaded", err=True)
        else:
            what = "would upload" if dry_run else ("uploaded" if push else "ready to upload")
            click.echo(f"{what} ({'to ' + push if push else 'with --push REPO_ID'}):")
            for path, size in result.files:
                click.echo(f"  {path}  {human_bytes(size)}")
            if result.url:
                click.echo(f"commit: {result.url}")
    sys.exit(result.exit_code)
