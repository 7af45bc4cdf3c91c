"""The generated CRI v1 modules (`make cri-api` writes them into generated/, never committed), imported in one
place: a hyperd whose build lacks them says what to run instead of failing on an import."""

from __future__ import annotations

from ..errors import Unavailable

try:
    from .generated import api_pb2 as pb
    from .generated import api_pb2_grpc as rpc
except (ImportError, RuntimeError) as e:  # not built, or built by another grpcio-tools than the one installed
    raise Unavailable(f"the CRI API is not built ({e}): run `make cri-api` (or start hyperd with --no-cri)") from None

__all__ = ["pb", "rpc"]
