"""hyperctl tenant (create, ls, rm) and token (create, ls, revoke): the administrator's, on hyperd's unix socket."""

from __future__ import annotations

import datetime as dt

import click

from ..client import Client, for_each


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "never"


def _table(cols: tuple[str, ...], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in cols:
        t.add_column(col, no_wrap=True)
    for row in rows:
        t.add_row(*row)
    Console(width=200).print(t)


@click.group("tenant")
def tenant() -> None:
    """Manage tenants: who may use hyperd remotely, and how much (quotas)."""


@tenant.command("create")
@click.option("--max-pods", type=click.IntRange(0), help="Pods at once, any state [10].")
@click.option("--max-vcpus", type=click.IntRange(0), help="vCPUs of its pods together [16].")
@click.option("--max-memory", type=click.IntRange(0), metavar="MiB", help="Memory of its pods together [16384].")
@click.option("--max-volume-gib", type=click.IntRange(0), help="Volume space, GiB [100].")
@click.argument("name")
def tenant_create(max_pods: int | None, max_vcpus: int | None, max_memory: int | None, max_volume_gib: int | None,
                  name: str) -> None:
    """Create a tenant."""
    body = {"name": name, "max_pods": max_pods, "max_vcpus": max_vcpus, "max_memory": max_memory,
            "max_volume_gib": max_volume_gib}
    click.echo(Client().request("POST", "/v1/tenants", json=body)["name"])


@tenant.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only print names.")
def tenant_ls(quiet: bool) -> None:
    """List tenants, their quotas and what they use."""
    rows = Client().request("GET", "/v1/tenants")
    if quiet:
        for t in rows:
            click.echo(t["name"])
        return
    _table(("NAME", "PODS", "VCPUS", "MEMORY (MiB)", "VOLUMES (GiB)", "CREATED"),
           [[t["name"], f"{t['usage']['pods']}/{t['max_pods']}", f"{t['usage']['vcpus']}/{t['max_vcpus']}",
             f"{t['usage']['memory']}/{t['max_memory']}", str(t["max_volume_gib"]), _when(t["created"])]
            for t in rows])


@tenant.command("rm")
@click.option("-f", "--force", is_flag=True, help="Also remove its pods (else refused while it has any).")
@click.argument("names", nargs=-1, required=True)
def tenant_rm(force: bool, names: tuple[str, ...]) -> None:
    """Remove tenants: their tokens stop working, their image names go."""
    client = Client()
    for_each(names, lambda n: [client.request("DELETE", f"/v1/tenants/{n}", params={"force": force})["name"]])


@click.group("token")
def token() -> None:
    """Manage tenants' API tokens."""


@token.command("create")
@click.option("--tenant", "tenant_name", required=True, help="The tenant the token acts for.")
@click.option("--expires", default="30d", show_default=True, help="Lifetime: 30d, 12h, 90m, 3600s, or never.")
def token_create(tenant_name: str, expires: str) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    r = Client().request("POST", "/v1/tokens", json={"tenant": tenant_name, "expires": expires})
    click.echo(f"token {r['id']} for {r['tenant']}, expires {_when(r['expires'])}", err=True)
    click.echo(r["token"])


@token.command("ls")
@click.option("--tenant", "tenant_name", help="Only this tenant's.")
def token_ls(tenant_name: str | None) -> None:
    """List tokens (never their secrets)."""
    rows = Client().request("GET", "/v1/tokens", params={"tenant": tenant_name} if tenant_name else {})
    _table(("ID", "TENANT", "CREATED", "EXPIRES", "STATE"),
           [[t["id"], t["tenant"], _when(t["created"]), _when(t["expires"]), t["state"]] for t in rows])


@token.command("revoke")
@click.argument("ids", nargs=-1, required=True)
def token_revoke(ids: tuple[str, ...]) -> None:
    """Revoke tokens: refused from their next request on; their open streams are cut."""
    client = Client()
    for_each(ids, lambda i: [client.request("DELETE", f"/v1/tokens/{i}")["id"]])


COMMANDS = [tenant, token]
