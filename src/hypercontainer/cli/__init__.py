"""The command-line clients: hyperctl (talks to hyperd) and runv (an OCI runtime)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn


def leave_after(main: Callable[[], object]) -> NoReturn:
    """Runs a CLI's main, then leaves with its exit status at once: output flushed, but without the interpreter's
    teardown of every imported module (30-50 ms here, paid by every `hyperctl run` and every runv call that a
    container engine makes). Nothing of ours relies on atexit handlers or finalizers."""
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe (hyperctl ps | head): nothing more to say
            stream.flush()
    os._exit(code or 0)
