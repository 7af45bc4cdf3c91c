"""What ps, images and stats share: `--format` templates (docker's `{{.Field}}` subset, `\\t` and `\\n` escapes) and
the newer verbs' way with bad input (one line, exit 125)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from typing import NoReturn

import click

PLACEHOLDER = re.compile(r"{{\s*\.([A-Za-z0-9_]*)\s*}}")


def bad_usage(message: str) -> NoReturn:
    """docker's way with bad input to its newer verbs: one line, exit 125."""
    click.echo(f"hyperctl: {message}", err=True)
    sys.exit(125)


def template_of(fmt: str | None) -> str:
    """--format's text with its escapes made real (a tab, a newline)."""
    return (fmt or "").replace("\\t", "\t").replace("\\n", "\n")


def check_template(template: str, fields: Iterable[str]) -> None:
    """bad_usage() for a placeholder naming no field, or any other `{{...}}`."""
    known = list(fields)
    for m in PLACEHOLDER.finditer(template):
        if m.group(1) not in known:
            bad_usage(f"--format: no field .{m.group(1)} (the fields: {', '.join(known)})")
    rest = PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        bad_usage(f"--format: only {{{{.Field}}}} placeholders are understood (the fields: {', '.join(known)})")


def render(template: str, values: Mapping[str, object]) -> str:
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)


def align(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, each column but the last padded to its widest cell (docker's tabwriter)."""
    widths: dict[int, int] = {}
    for row in rows:
        for i, c in enumerate(row[:-1]):
            widths[i] = max(widths.get(i, 0), len(c))
    return ["   ".join([c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + row[-1:]).rstrip() for row in rows]
