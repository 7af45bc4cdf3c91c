"""hyperctl: the docker-like client of hyperd. One module per group of verbs."""

from __future__ import annotations

import sys

import click

from ... import __version__
from ...errors import HCError
from . import images, info, pods, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hyperctl")
def cli() -> None:
    """hyperctl: run containers, each pod in its own VM."""


for module in (run, pods, images, info):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(125 if sys.argv[1:2] in (["run"], ["exec"]) else 2)
    except click.exceptions.Abort:
        sys.exit(130)
    except HCError as e:
        click.echo(f"hyperctl: {e.message}", err=True)
        sys.exit(e.exit_code if sys.argv[1:2] in (["run"], ["exec"]) else 1)
    sys.exit(0)
