"""hyperctl: the docker-like client of hyperd. One module per group of verbs."""

from __future__ import annotations

import importlib
import sys

import click

from ... import __version__
from ...errors import NoSpace
from .. import run_cli
from ..context import choose

# Which module holds each verb: only the invoked one is imported (start-up time counts in every `run`).
VERBS = {
    "run": ("run", "run_cmd"), "exec": ("run", "exec_cmd"), "attach": ("run", "attach_cmd"),
    "create": ("run", "create_cmd"),
    **{v: ("pods", v) for v in ("ps", "rm", "logs", "inspect", "port", "stop", "kill", "pause", "unpause",
                                "events", "wait", "start", "restart", "rename")},
    **{v: ("images", v) for v in ("images", "pull", "load", "save", "tag", "rmi", "login", "logout", "image")},
    "info": ("info", "info"), "version": ("info", "version"), "context": ("contexts", "context"),
    "tenant": ("tenants", "tenant"), "token": ("tenants", "token"), "network": ("networks", "network"),
    "volume": ("volumes", "volume"),
    "push": ("images", "push"),
    "system": ("system", "system"),
    "completion": ("system", "completion"),
    "stats": ("stats", "stats"),
    "cp": ("copy", "cp"),
    "top": ("top", "top"),
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
@click.option("-H", "--host", metavar="URL",
              help="hyperd at tcp://HOST:PORT (TLS) or unix:///PATH [$HYPERCONTAINER_HOST, else the current "
                   "context, else the local socket].")
@click.option("--tls-ca", metavar="FILE", help="The CA certificate that signed the server's (hyperd tls init's "
              "ca.pem) [$HYPERCONTAINER_TLS_CA; a context's own; else the system's CAs].")
@click.option("--context", metavar="NAME", help="Use this context (hyperctl context ls) rather than the current one.")
@click.version_option(__version__, prog_name="hyperctl")
def cli(host: str | None, tls_ca: str | None, context: str | None) -> None:
    """hyperctl: run containers, each pod in its own VM.

    A remote hyperd's token is read from $HYPERCONTAINER_TOKEN (or the context)."""
    if host and context:
        raise click.UsageError("give --host or --context, not both")
    choose(host, tls_ca, context)


GLOBAL_VALUED = ("-H", "--host", "--tls-ca", "--context")  # cli's options that take a value


def verb(args: list[str]) -> str | None:
    """The verb of a command line: its first word after the global options."""
    it = iter(args)
    for a in it:
        if a in GLOBAL_VALUED:
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main() -> None:
    """docker's exit codes: `run` and `exec` exit 125 when they cannot run the command, or its own failure
    code (126, 127); other verbs exit 2 on bad usage, 125 when hyperd's disk is full (NoSpace) and 1 on other
    errors."""
    runs = verb(sys.argv[1:]) in ("run", "exec")
    run_cli(cli, "hyperctl", 125 if runs else 2, lambda e: e.exit_code if runs or isinstance(e, NoSpace) else 1)
