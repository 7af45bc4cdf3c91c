"""Signal names and numbers, as users type them: 'SIGUSR1', 'USR1', 'usr1' or '10'."""

from __future__ import annotations

import signal

from .errors import InvalidArgument


def parse_signal(text: str | int) -> int:
    if isinstance(text, int) or str(text).isdigit():
        num = int(text)
    else:
        try:
            num = signal.Signals["SIG" + str(text).upper().removeprefix("SIG")].value
        except KeyError:
            raise InvalidArgument(f"unknown signal {text}") from None
    if not 0 < num < 65:
        raise InvalidArgument(f"signal {text} out of range")
    return num
