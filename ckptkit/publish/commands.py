import click


@click.command("publish")
def publish_cmd():
    """(in progress)"""
