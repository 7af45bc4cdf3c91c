"""The command-line clients: hyperctl (talks to hyperd) and runv (an OCI runtime)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # `typing` costs each runv call ~6-19 ms of imports
if TYPE_CHECKING:
    from typing import NoReturn

    import click

    from ..errors import HCError


def leave_after(main: Callable[[], object]) -> NoReturn:
    """Runs a CLI's main, then leaves with its exit status at once: output flushed, but without the interpreter's
    teardown of every imported module (30-50 ms here, paid by every `hyperctl run` and every runv call that a
    container engine makes). Nothing of ours relies on atexit handlers or finalizers."""
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    except BrokenPipeError:  # stdout's reader went away (`runv state ID | grep -q ...`): no traceback, as a
        code = 141  # writer killed by SIGPIPE ends (128 + 13)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (hyperctl ps | head): nothing more to say
            stream.flush()
    os._exit(code or 0)


def run_cli(group: click.Group, prog: str, usage_exit: int, error_exit: Callable[[HCError], int],
            report: Callable[[str], None] | None = None) -> NoReturn:
    """A click group's main for hyperctl and runv: usage errors exit `usage_exit`, Ctrl-C 130, our errors are
    printed as "PROG: message" (and handed to `report`) and exit `error_exit(e)`; then leave_after."""
    import click

    from ..errors import HCError

    def main() -> None:
        try:
            group.main(standalone_mode=False)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(usage_exit)
        except click.exceptions.Abort:
            sys.exit(130)
        except HCError as e:
            if report:
                report(e.message)
            click.echo(f"{prog}: {e.message}", err=True)
            sys.exit(error_exit(e))

    leave_after(main)
