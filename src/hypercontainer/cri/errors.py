"""hyperd's errors as gRPC statuses: one table, applied at one boundary (the `unary` and `stream` wrappers around
every RPC). A handler raises HCError (or CriError for a code the table cannot tell, such as AlreadyExists); what
is not an HCError is a bug: INTERNAL with its type, and the traceback in hyperd's log."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..errors import (
    FULL,
    CommandNotRunnable,
    Conflict,
    HCError,
    InvalidArgument,
    NoSpace,
    NotFound,
    Unavailable,
    VMError,
    host_error,
)
from ..image.registry import AuthError, RegistryError

log = logging.getLogger(__name__)
S = TypeVar("S")

CODES: dict[type[HCError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    CommandNotRunnable: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,  # the wrong state for the request (names are checked apart)
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    RegistryError: grpc.StatusCode.UNAVAILABLE,
    VMError: grpc.StatusCode.INTERNAL,
    NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class CriError(HCError):
    """An error whose gRPC code is given with it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.grpc_code = code


def already_exists(message: str) -> CriError:
    return CriError(grpc.StatusCode.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> CriError:
    return CriError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> CriError:
    return CriError(grpc.StatusCode.UNIMPLEMENTED, message)


def code_of(e: HCError) -> grpc.StatusCode:
    if isinstance(e, CriError):
        return e.grpc_code
    for cls in type(e).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.UNKNOWN


async def _abort(context: grpc.aio.ServicerContext, name: str, e: BaseException) -> None:
    if isinstance(e, OSError) and e.errno in FULL:  # hyperd's disk is full: the kubelet's to know
        e = host_error(e, "hyperd's state directory")
    if isinstance(e, HCError):
        log.debug("CRI %s: %s", name, e.message)
        await context.abort(code_of(e), e.message)
    log.exception("CRI %s failed", name)
    await context.abort(grpc.StatusCode.INTERNAL, f"{name}: {type(e).__name__}: {e}")


Unary = Callable[[S, Any, grpc.aio.ServicerContext], Awaitable[Any]]
Stream = Callable[[S, Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def unary(fn: Unary[S]) -> Unary[S]:
    """A unary RPC whose HCErrors become statuses."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(context, fn.__name__, e)

    return wrapper


def finishing(fn: Unary[S]) -> Unary[S]:
    """A unary RPC that, once begun, runs to its end even if the client goes away (its deadline passes: crictl's
    default is 2 s, shorter than a VM's shutdown): stopping or removing half a sandbox helps no one."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> Any:
        task = asyncio.ensure_future(fn(self, request, context))
        task.add_done_callback(_log_orphan)
        return await asyncio.shield(task)

    return wrapper


def _log_orphan(task: asyncio.Future[Any]) -> None:
    """The result of a finishing RPC whose client left: logged, not lost."""
    if task.cancelled():
        return
    e = task.exception()
    if e is not None and not isinstance(e, HCError):
        log.error("CRI call failed after its client left: %s: %s", type(e).__name__, e)


def stream(fn: Stream[S]) -> Stream[S]:
    """A server-streaming RPC whose HCErrors become statuses."""

    @functools.wraps(fn)
    async def wrapper(self: S, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            await _abort(context, fn.__name__, e)

    return wrapper
