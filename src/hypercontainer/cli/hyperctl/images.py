"""hyperctl images, pull, load, save, tag, rmi, login, logout, and the `image` group (prune, check, inspect)."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ...errors import HCError
from ...image import auth
from ..client import Client, dumps, for_each
from .formats import bad_usage, check_template, render, template_of

if TYPE_CHECKING:
    from rich.progress import TaskID


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"


def _registry_of(ref: str) -> str:
    from ...image.reference import parse

    return parse(ref).registry


FIELDS = ("Repository", "Tag", "Digest", "ID", "CreatedAt", "Size")
HEADERS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID", "CreatedAt": "CREATED AT",
           "Size": "SIZE"}
FILTERS = ("reference", "dangling", "before", "since")


def _glob(pattern: str) -> re.Pattern[str]:
    """docker's reference pattern: `*` and `?` stop at `/`; [...] as in the shell."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1:]:
            j = pattern.index("]", i + 1)
            body = pattern[i + 1 : j]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _rows(imgs: list[dict]) -> list[dict]:
    """One row per name (an unnamed image: one <none> row), with the fields --format knows."""
    rows = []
    for img in imgs:
        for ref in img["refs"] or ["<none>:<none>"]:
            repo, _, tag = ref.rpartition(":")
            digest = next((d.split("@")[1] for d in img["digests"] if d.split("@")[0] == repo), "<none>")
            rows.append({"Repository": repo, "Tag": tag, "Digest": digest, "ID": img["id"][7:19],
                         "CreatedAt": img["created"][:19].replace("T", " "), "Size": human(img["size"]),
                         "_image": img})
    return rows


def _filtered(rows: list[dict], filters: tuple[str, ...], client: Client) -> list[dict]:
    by: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq or key not in FILTERS:
            bad_usage(f"invalid filter {f!r}: one of {', '.join(k + '=' for k in FILTERS)}")
        by.setdefault(key, []).append(value)
    for value in by.get("dangling", []):
        if value.lower() not in ("true", "false", "1", "0"):
            bad_usage(f"invalid filter 'dangling={value}': true or false")
        want = value.lower() in ("true", "1")
        rows = [r for r in rows if (not r["_image"]["refs"]) == want]
    if "reference" in by:
        pats = [_glob(p) for p in by["reference"]]
        rows = [r for r in rows if r["_image"]["refs"] and any(
            p.match(r["Repository"]) or p.match(f"{r['Repository']}:{r['Tag']}") for p in pats)]
    for key in ("before", "since"):
        for value in by.get(key, []):
            try:
                created = client.images.get(value).attrs["created"]
            except HCError as e:
                bad_usage(f"filter {key}={value}: {e.message}")
            rows = [r for r in rows if (r["_image"]["created"] < created if key == "before"
                                        else r["_image"]["created"] > created)]
    return rows


@click.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only print image ids.")
@click.option("--digests", is_flag=True, help="Show repository digests.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="reference=PATTERN (a glob), dangling=true|false, before=IMAGE, since=IMAGE; repeatable.")
@click.option("--format", "fmt", metavar="FORMAT",
              help="json (a JSON object per line), or a template such as '{{.Repository}}:{{.Tag}}\\t{{.ID}}' "
                   "(fields: " + ", ".join(FIELDS) + "; a leading 'table ' adds a header).")
def images(quiet: bool, digests: bool, filters: tuple[str, ...], fmt: str | None) -> None:
    """List images."""
    client = Client()
    rows = _filtered(_rows([i.attrs for i in client.images.list()]), filters, client)
    if quiet:
        for img_id in dict.fromkeys(r["_image"]["id"] for r in rows):
            click.echo(img_id[7:19])
        return
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps({k: r[k] for k in FIELDS}))
        return
    if fmt:
        template = template_of(fmt)
        check_template(template.removeprefix("table "), FIELDS)
        if template.startswith("table "):
            template = template[6:]
            click.echo(render(template, HEADERS))
        for r in rows:
            click.echo(render(template, r))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    cols = ["REPOSITORY", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "CREATED", "SIZE"]
    for col in cols:
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(r["Repository"], r["Tag"], *([r["Digest"]] if digests else []), r["ID"], r["CreatedAt"], r["Size"])
    Console(width=250).print(t)


class _Bars:
    """Per-layer progress: rich bars on a terminal, one line per state change otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.tasks: dict[str, TaskID] = {}
        self.last: dict[str, str] = {}
        self.progress = None
        if self.tty:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     transient=False)
            self.progress.start()

    def event(self, ev: dict) -> None:
        lid, status = ev.get("id"), ev.get("status", "")
        if not lid:
            if status and status != "Downloaded":
                click.echo(status, err=True)
            return
        if self.progress is not None:
            if lid not in self.tasks:
                self.tasks[lid] = self.progress.add_task(lid, total=ev.get("total"))
            done = ev.get("current", ev.get("total") if status != "Downloading" else 0)
            self.progress.update(self.tasks[lid], description=f"{lid}: {status}", completed=done)
        elif self.last.get(lid) != status:
            self.last[lid] = status
            click.echo(f"{lid}: {status}", err=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@click.command("pull")
@click.option("--platform", help="os/arch[/variant] to pick from a multi-platform image [linux/amd64].")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("ref")
def pull(platform: str | None, quiet: bool, ref: str) -> None:
    """Pull an image from a registry."""
    creds = auth.load_all().get(_registry_of(ref))
    login = (creds.username, creds.password) if creds else None
    with _progress(quiet) as progress:
        final = Client(timeout=None).images.pull(ref, platform=platform, auth=login, progress=progress).attrs
    if not quiet:
        for d in final["digests"]:
            click.echo(f"Digest: {d.split('@')[1]}", err=True)
    click.echo(ref)


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[dict], None] | None]:
    """The progress callback of a pull or push (None with -q): bars on a terminal, lines otherwise."""
    bars = None if quiet else _Bars()
    try:
        yield bars.event if bars else None
    finally:
        if bars:
            bars.close()


@click.command("push")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.argument("ref", metavar="NAME[:TAG]")
def push(quiet: bool, ref: str) -> None:
    """Push an image to a registry (credentials from 'hyperctl login').

    Exits 125 when the image cannot be pushed."""
    try:
        creds = auth.load_all().get(_registry_of(ref))
        with _progress(quiet) as progress:
            done = Client(timeout=None).images.push(ref, auth=(creds.username, creds.password) if creds else None,
                                                    progress=progress)
    except HCError as e:
        click.echo(f"hyperctl: {e.message}", err=True)
        sys.exit(125)
    click.echo(f"{done['ref']}: digest: {done['digest']} size: {done['size']}")


@click.command("load")
@click.option("-i", "--input", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A docker-archive or OCI-archive tarball.")
def load(path: Path) -> None:
    """Load images from an archive."""
    for img in Client().images.load(path):
        for ref in img["refs"] or [img["id"]]:
            click.echo(f"Loaded image: {ref}")


@click.command("save")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Archive to write.")
@click.option("--format", "fmt", type=click.Choice(["docker", "oci"]), default="docker", show_default=True)
@click.argument("refs", metavar="IMAGE...", nargs=-1, required=True)
def save(output: Path, fmt: str, refs: tuple[str, ...]) -> None:
    """Save images to a docker-archive or OCI-archive tarball."""
    Client(timeout=None).images.save(list(refs), output, format=fmt)


@click.command("tag")
@click.argument("source")
@click.argument("target")
def tag(source: str, target: str) -> None:
    """Give an image another name."""
    Client().images.tag(source, target)


@click.command("rmi")
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True)
def rmi(images_: tuple[str, ...]) -> None:
    """Remove images (untag; delete once no tag is left)."""
    client = Client()
    for_each(images_, client.images.remove)


@click.command("login")
@click.option("-u", "--username", prompt=True)
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.argument("registry")
def login(username: str, password: str | None, password_stdin: bool, registry: str) -> None:
    """Log in to a registry; credentials are kept in ~/.config/hypercontainer/auth.json (mode 0600)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = click.prompt("Password", hide_input=True)
    Client().request("POST", "/v1/auth", json={"registry": registry, "username": username, "password": password})
    auth.store(registry, auth.Credentials(username, password or ""))
    click.echo("Login Succeeded")


@click.command("logout")
@click.argument("registry")
def logout(registry: str) -> None:
    """Forget the credentials of a registry."""
    if auth.forget(registry):
        click.echo(f"Removing login credentials for {registry}")
    else:
        click.echo(f"Not logged in to {registry}")


@click.group("image")
def image() -> None:
    """Manage images (also: images, pull, load, save, tag, rmi)."""


@image.command("prune")
def image_prune() -> None:
    """Remove untagged images and every blob and layer no image uses."""
    r = Client().request("POST", "/v1/images/prune")
    for i in r["images"]:
        click.echo(f"Deleted: {i}")
    click.echo(f"Total reclaimed space: {human(r['bytes_freed'])}")


@image.command("check")
def image_check() -> None:
    """Verify the image store: references, blob digests, unpacked layers."""
    problems = Client(timeout=None).request("GET", "/v1/images/check")["problems"]
    for p in problems:
        click.echo(p)
    if problems:
        sys.exit(1)
    click.echo("image store is consistent")


@image.command("inspect")
@click.argument("ref")
def image_inspect(ref: str) -> None:
    """Show an image's details as JSON."""
    click.echo(dumps(Client().images.get(ref).attrs))


image.add_command(images, "ls")
image.add_command(pull)
image.add_command(push)
image.add_command(load)
image.add_command(save)
image.add_command(tag)
image.add_command(rmi, "rm")

COMMANDS = [images, pull, push, load, save, tag, rmi, login, logout, image]
