"""hyperctl top: a pod's container processes, as the guest sees them (docker top)."""

from __future__ import annotations

import click

from ..client import Client
from .formats import align


@click.command("top", context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.option("-c", "--container", help="The pod's container (default: its first).")
@click.argument("pod")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
def top(container: str | None, pod: str, ps_options: tuple[str, ...]) -> None:
    """The processes of a pod's container: PID, user, CPU time, command (with PS_OPTIONS: the container's own ps
    runs with them)."""
    answer = Client().pods.handle(pod).top(" ".join(ps_options), container=container)
    for line in align([answer["titles"], *([str(c) for c in r] for r in answer["processes"])]):
        click.echo(line)


COMMANDS = [top]
