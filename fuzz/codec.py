"""protocol/codec.py: control and stream frames from a hostile guest, cut into arbitrary chunks.

Allowed: ProtocolError. Checked besides: whatever decodes re-encodes to the same fields (encode_ctl never refuses
what decode_fields accepted), and chunking never changes what comes out."""

from __future__ import annotations

import contextlib
from typing import Literal

import atheris

with atheris.instrument_imports(include=["hypercontainer.protocol"]):
    from hypercontainer.protocol import codec
    from hypercontainer.protocol.codec import CtlFrame, FrameReader, IoFrame, ProtocolError


def _frames(kind: Literal["ctl", "io"], chunks: list[bytes]) -> tuple[list[CtlFrame] | list[IoFrame], int] | None:
    reader = FrameReader(kind)
    out: list = []
    try:
        for c in chunks:
            out += reader.feed(c)
    except ProtocolError:
        return None
    return out, reader.pending


def test_one(data: bytes) -> None:
    """data: a byte whose low bit picks the channel (1: control) and whose bits 1-3 count chunk sizes, the sizes
    (a byte each: 1 + b % 64), then the stream."""
    if not data:
        return
    kind: Literal["ctl", "io"] = "ctl" if data[0] & 1 else "io"
    n = (data[0] >> 1) & 7
    sizes = [1 + b % 64 for b in data[1 : 1 + n]]
    body = data[1 + n :]
    chunks, off = [], 0
    for n in sizes:
        chunks.append(body[off : off + n])
        off += n
    chunks.append(body[off:])
    got = _frames(kind, chunks)
    whole = _frames(kind, [body])
    # chunking may only change *when* an error shows (a frame before it may already have come out), never the
    # frames themselves: whole-stream decoding succeeds exactly when chunked decoding does
    assert (got is None) == (whole is None), (got, whole)
    if got is None or whole is None:
        return
    assert got == whole, (got, whole)
    frames, _pending = got
    for f in frames:
        if isinstance(f, CtlFrame):
            again = codec.FrameReader("ctl").feed(codec.encode_ctl(f.type, f.seq, f.fields))
            assert again == [f], (f, again)
            with contextlib.suppress(ProtocolError):
                codec.check_from_guest(f)
        else:
            again_io = codec.FrameReader("io").feed(codec.encode_io(f.stream, f.data))
            assert again_io == [f], (f, again_io)
    # the payload decoder alone, as for any field set
    with contextlib.suppress(ProtocolError):
        codec.decode_fields(body)
