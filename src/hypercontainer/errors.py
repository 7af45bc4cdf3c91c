"""One exception tree with messages meant for people; HTTP status and CLI exit code come from one table.

    HCError
    ├── InvalidArgument   400  bad input: spec, flags, archive contents
    │   └── ImageError    400  an image that cannot be loaded or unpacked
    ├── Unauthenticated   401  a remote request without a valid token
    ├── Forbidden         403  a tenant asked for what is the administrator's, or past its quota
    ├── NotFound          404  no such pod, container or image
    ├── Conflict          409  name in use, wrong state for the request
    ├── RateLimited       429  a token's requests came faster than its rate
    ├── VMError           500  QEMU or the guest failed
    │   └── AgentError    500  the agent refused a request (carries its errno)
    ├── Unavailable       503  hyperd is not running or not reachable
    └── NoSpace           507  hyperd's state could not be written: its disk is full
"""

from __future__ import annotations

import errno as errno_mod


class HCError(Exception):
    status = 500
    code = "internal"
    exit_code = 125  # docker's "the daemon failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        """The JSON the API answers with."""
        return {"code": self.code, "message": self.message}


class InvalidArgument(HCError):
    status, code = 400, "invalid_argument"


class ImageError(InvalidArgument):
    code = "image"


class Unauthenticated(HCError):
    status, code = 401, "unauthenticated"


class Forbidden(HCError):
    status, code = 403, "forbidden"


class RateLimited(HCError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(HCError):
    status, code = 404, "not_found"


class Conflict(HCError):
    status, code = 409, "conflict"


class VMError(HCError):
    code = "vm"


class AgentError(VMError):
    code = "agent"

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class Unavailable(HCError):
    status, code = 503, "unavailable"


class NoSpace(HCError):
    """A write of hyperd's state failed for want of space (ENOSPC, EDQUOT): HTTP 507."""

    status, code = 507, "no_space"


FULL = (errno_mod.ENOSPC, errno_mod.EDQUOT)


def no_space(where: object, e: OSError | None = None) -> NoSpace:
    why = "disk quota exceeded" if e is not None and e.errno == errno_mod.EDQUOT else "no space left on device"
    return NoSpace(f"{why} on {where}")


def host_error(e: OSError, where: object) -> HCError:
    """A host OSError as the user's error: a full disk is NoSpace (507) naming where, any other a one-line 500."""
    where = e.filename or where
    return no_space(where, e) if e.errno in FULL else HCError(f"{e.strerror or e} ({where})")


class CommandNotRunnable(InvalidArgument):
    """The container's command could not be started (docker: 126 not executable, 127 not found)."""

    code = "command"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def body(self) -> dict:
        return {**super().body(), "exit_code": self.exit_code}


BY_CODE: dict[str, type[HCError]] = {
    c.code: c
    for c in (HCError, InvalidArgument, ImageError, Unauthenticated, Forbidden, RateLimited, NotFound, Conflict,
              VMError, AgentError, Unavailable, NoSpace)
}
