"""hyperctl: the docker-like client of hyperd. One module per group of verbs."""

from __future__ import annotations

import importlib
import sys

import click

from ... import __version__
from .. import run_cli

# Which module holds each verb: only the invoked one is imported (start-up time counts in every `run`).
VERBS = {
    "run": ("run", "run_cmd"), "exec": ("run", "exec_cmd"), "attach": ("run", "attach_cmd"),
    "create": ("run", "create_cmd"),
    **{v: ("pods", v) for v in ("ps", "rm", "logs", "inspect", "port", "stop", "kill", "pause", "unpause",
                                "events")},
    **{v: ("images", v) for v in ("images", "pull", "load", "save", "tag", "rmi", "login", "logout", "image")},
    "info": ("info", "info"), "version": ("info", "version"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module, attr = VERBS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hyperctl")
def cli() -> None:
    """hyperctl: run containers, each pod in its own VM."""


def main() -> None:
    """docker's exit codes: `run` and `exec` exit 125 when they cannot run the command, or its own failure
    code (126, 127); other verbs exit 2 on bad usage and 1 on errors."""
    runs = sys.argv[1:2] in (["run"], ["exec"])
    run_cli(cli, "hyperctl", 125 if runs else 2, lambda e: e.exit_code if runs else 1)
