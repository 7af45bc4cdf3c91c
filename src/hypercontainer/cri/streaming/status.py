"""What the kubelet writes on the error stream when a remote command ends (k8s.io/kubelet's cri/streaming/
remotecommand, decoded by client-go's remotecommand errorDecoderV4): a metav1.Status as JSON from protocol v4 on,
plain text for a failure before that (success: nothing)."""

from __future__ import annotations

import json
from typing import Any

NON_ZERO_EXIT_CODE = "NonZeroExitCode"  # k8s.io/apimachinery/pkg/util/remotecommand
EXIT_CODE_CAUSE = "ExitCode"


def _json(status: dict[str, Any]) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()


def success() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code(code: int, cmd: list[str]) -> dict[str, Any]:
    """A command that ended with a non-zero status (0-255: client-go parses the cause as an 8-bit number)."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {_go_list(cmd)}, "
                   f"exit code {code}",
        "reason": NON_ZERO_EXIT_CODE,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]},
    }


def internal_error(message: str) -> dict[str, Any]:
    """apierrors.NewInternalError: what a command that could not be run (or a runtime failure) gets."""
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def encode(status: dict[str, Any], v4: bool) -> bytes:
    """The error stream's bytes: JSON for v4 and later; for v1-v3 the message of a failure, nothing on success."""
    if v4:
        return _json(status)
    return b"" if status["status"] == "Success" else str(status.get("message", "")).encode()


def _go_list(cmd: list[str]) -> str:
    return "[" + " ".join(cmd) + "]"  # how Go's %v prints a []string, as containerd's message has it
