"""What travels between nnInteractive's remote client (nninteractive-client 2.6.0) and this server: the
endpoint paths, the two headers, and packed arrays.

A packed array is the client's format, written here from its description: b"NNIA", version 1, codec
(1 zstd, 2 lz4), ndim, the length of the dtype's name and the name ("uint8", "float32", ...), the
shape as little-endian int64s, then a uint32 chunk count and per chunk its uncompressed and compressed
byte counts (uint64 each) and a blosc2 frame. Unpacking trusts nothing: the dtype must be a plain
number type, the shape within the caller's voxel limit, every size consistent, before memory is taken.
"""
from __future__ import annotations

import struct

import blosc2
import numpy as np

META_HEADER = "X-Meta"  # JSON metadata beside a packed array (requests and prediction answers)
LEASE_HEADER = "X-Lease-Token"  # which session a request belongs to
OCTET_STREAM = "application/octet-stream"

HEALTHZ = "/healthz"
CAPABILITIES = "/capabilities"
CLAIM = "/claim"
RELEASE = "/release"
HEARTBEAT = "/heartbeat"
LEASE_STATUS = "/lease_status"
SET_IMAGE = "/set_image"
SET_TARGET_BUFFER = "/set_target_buffer"
SET_DO_AUTOZOOM = "/set_do_autozoom"
RESET_INTERACTIONS = "/reset_interactions"
UNDO = "/undo"
PREDICT = "/predict"
ADD_BBOX = "/add_bbox_interaction"
ADD_POINT = "/add_point_interaction"
ADD_SCRIBBLE = "/add_scribble_interaction"
ADD_LASSO = "/add_lasso_interaction"
ADD_INITIAL_SEG = "/add_initial_seg_interaction"

MAGIC = b"NNIA"
VERSION = 1
CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
CHUNK_BYTES = 1 << 30  # blosc2 takes at most 2 GiB - 1 per call
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "float16", "float32", "float64")
MAX_CHUNKS = 1 << 16


class ClientError(Exception):
    """A request this server cannot take: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def pack(array: np.ndarray) -> bytes:
    """An array in the client's packed format (zstd, no filter: masks compress best that way)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    name = array.dtype.name.encode("ascii")
    raw = memoryview(array).cast("B")
    chunks = []
    for start in range(0, max(raw.nbytes, 1), CHUNK_BYTES):
        part = raw[start:start + CHUNK_BYTES]
        # typesize = itemsize keeps every chunk a whole number of items (blosc2 cannot read back an all-zero
        # buffer compressed with a typesize that does not divide its length)
        frame = blosc2.compress2(part, typesize=array.dtype.itemsize, codec=blosc2.Codec.ZSTD, clevel=3,
                                 filters=[blosc2.Filter.NOFILTER])
        chunks.append(struct.pack("<QQ", part.nbytes, len(frame)) + frame)
    head = struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, 1, array.ndim, len(name), name)
    return head + struct.pack(f"<{array.ndim}q", *array.shape) + struct.pack("<I", len(chunks)) + b"".join(chunks)


def unpack(buffer: bytes, ndim: int, max_voxels: int, what: str) -> np.ndarray:
    """The array in a packed body, which must have `ndim` axes and at most `max_voxels` elements.

    Raises ClientError: 400 for anything malformed, 413 for an array over the limit."""
    view = memoryview(buffer)
    try:
        magic, version, codec, got_ndim, name_length = struct.unpack_from("<4sBBBB", view, 0)
        offset = 8
        name = bytes(view[offset:offset + name_length]).decode("ascii")
        offset += name_length
        shape = struct.unpack_from(f"<{got_ndim}q", view, offset)
        offset += 8 * got_ndim
        (count,) = struct.unpack_from("<I", view, offset)
        offset += 4
    except (struct.error, UnicodeDecodeError):
        raise ClientError(400, f"{what}: not a packed array (too short or garbled header)") from None
    if magic != MAGIC or version != VERSION or codec not in CODECS:
        raise ClientError(400, f"{what}: not a packed array of version {VERSION} (magic {magic!r}, version {version}, "
                               f"codec {codec})")
    if name not in DTYPES:
        raise ClientError(400, f"{what}: dtype {name[:40]!r} is not one of {', '.join(DTYPES)}")
    if got_ndim != ndim:
        raise ClientError(400, f"{what}: expected {ndim} axes, got {got_ndim} (shape {list(shape)})")
    if any(n <= 0 for n in shape):
        raise ClientError(400, f"{what}: every axis needs at least one voxel, got shape {list(shape)}")
    voxels = int(np.prod(shape, dtype=object))
    if voxels > max_voxels:
        raise ClientError(413, f"{what}: {voxels} voxels (shape {list(shape)}), this server takes at most {max_voxels}")
    dtype = np.dtype(name)
    total = voxels * dtype.itemsize
    if count > MAX_CHUNKS or count < 1:
        raise ClientError(400, f"{what}: {count} chunks in the payload")
    out = np.empty(voxels, dtype=dtype)
    written = 0
    for _ in range(count):
        try:
            size, compressed = struct.unpack_from("<QQ", view, offset)
        except struct.error:
            raise ClientError(400, f"{what}: the payload ends inside a chunk header") from None
        offset += 16
        frame = view[offset:offset + compressed]
        offset += compressed
        if size % dtype.itemsize or written + size > total or len(frame) != compressed or compressed < 16:
            raise ClientError(400, f"{what}: chunk sizes do not match the shape {list(shape)} and dtype {name}")
        try:
            if blosc2.get_cbuffer_sizes(frame)[0] != size:
                raise ValueError("frame size differs from its header")
            blosc2.decompress2(frame, dst=out[written // dtype.itemsize:(written + size) // dtype.itemsize])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ClientError(400, f"{what}: a chunk does not decompress ({exc})") from None
        written += size
    if written != total or offset != len(view):
        raise ClientError(400, f"{what}: the payload holds {written} bytes of {total} for shape {list(shape)}"
                               f"{'' if offset == len(view) else ' and trailing bytes'}")
    return out.reshape(shape)
