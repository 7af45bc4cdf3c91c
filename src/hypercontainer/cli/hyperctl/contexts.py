"""hyperctl context: named hyperds (host, CA, token), one of them current, as docker's contexts (cli/context.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ...errors import Conflict, HCError, InvalidArgument, NotFound
from .. import context as ctxs


@click.group("context")
def context() -> None:
    """Manage contexts: which hyperd hyperctl talks to."""


@context.command("create")
@click.option("-H", "--host", required=True, metavar="URL", help="tcp://HOST:PORT (TLS) or unix:///PATH.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="The CA certificate that signed the server's (a copy is kept); none: the system's CAs.")
@click.option("--token-stdin", is_flag=True, help="Read the token (sent as Authorization: Bearer) from stdin.")
@click.argument("name")
def create(host: str, tls_ca: Path | None, token_stdin: bool, name: str) -> None:
    """Make a context (it does not become the current one: context use)."""
    ctxs.check_name(name)
    if name == ctxs.DEFAULT:
        raise InvalidArgument("'default' is the local socket's context; it cannot be made")
    sock, _, _ = ctxs.parse_host(host)
    ca = None
    if tls_ca is not None:
        ca = tls_ca.read_text()
        if "-----BEGIN CERTIFICATE-----" not in ca:
            raise InvalidArgument(f"--tls-ca {tls_ca}: not a PEM certificate")
        if sock is not None:
            raise InvalidArgument("--tls-ca goes with a tcp:// host")
    token = sys.stdin.readline().strip() if token_stdin else None
    if token_stdin and not token:
        raise InvalidArgument("--token-stdin: stdin held no token")
    data = ctxs.load()
    if name in data["contexts"]:
        raise Conflict(f"context {name!r} exists (context rm {name} first)")
    data["contexts"][name] = {"host": host, "ca": ca, "token": token}
    ctxs.save(data)
    click.echo(name)


@context.command("use")
@click.argument("name")
def use(name: str) -> None:
    """Make NAME the current context ('default': the local socket)."""
    data = ctxs.load()
    if name != ctxs.DEFAULT and name not in data["contexts"]:
        raise NotFound(f"no context {name!r} (hyperctl context ls)")
    data["current"] = None if name == ctxs.DEFAULT else name
    ctxs.save(data)
    click.echo(name)
    if os.environ.get(ctxs.ENV_HOST):
        click.echo(f"hyperctl: note: {ctxs.ENV_HOST} is set, and comes before the current context", err=True)


@context.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
def ls(quiet: bool) -> None:
    """List contexts; the current one is marked with *."""
    data = ctxs.load()
    current = data["current"] or ctxs.DEFAULT
    rows = [(ctxs.DEFAULT, f"unix://{ctxs.local().socket}", "", "")]
    for name, c in sorted(data["contexts"].items()):
        rows.append((name, c["host"], "yes" if c.get("ca") else "", "yes" if c.get("token") else ""))
    if quiet:
        click.echo("\n".join(r[0] for r in rows))
        return
    names = [f"{r[0]} *" if r[0] == current else r[0] for r in rows]
    width = max(len(n) for n in [*names, "NAME"]) + 3
    host_width = max(len(r[1]) for r in [*rows, ("", "HOST")]) + 3
    click.echo(f"{'NAME':<{width}}{'HOST':<{host_width}}{'CA':<6}TOKEN")
    for n, r in zip(names, rows, strict=True):
        click.echo(f"{n:<{width}}{r[1]:<{host_width}}{r[2]:<6}{r[3]}".rstrip())


@context.command("show")
def show() -> None:
    """Print the current context's name."""
    click.echo(ctxs.load()["current"] or ctxs.DEFAULT)


@context.command("rm")
@click.option("-f", "--force", is_flag=True, help="Also the current one (default becomes current).")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
def rm(force: bool, names: tuple[str, ...]) -> None:
    """Remove contexts."""
    data = ctxs.load()
    failed = False
    for name in names:
        try:
            if name == ctxs.DEFAULT:
                raise InvalidArgument("the default context cannot be removed")
            if name not in data["contexts"]:
                raise NotFound(f"no context {name!r}")
            if name == data["current"]:
                if not force:
                    raise Conflict(f"{name!r} is the current context: context use default first, or rm -f")
                data["current"] = None
            del data["contexts"][name]
            click.echo(name)
        except HCError as e:
            click.echo(f"hyperctl: {e.message}", err=True)
            failed = True
    ctxs.save(data)
    if failed:
        sys.exit(1)


COMMANDS = [context]
