"""Reader for the IDX format of MNIST-style datasets (plain or gzipped).

Layout: two zero bytes, a dtype code, the number of dimensions d, then d big-endian uint32 sizes,
then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from darkknowledge.errors import DKError

# IDX dtype code → big-endian numpy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path | str) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzip is detected from the content, not the name).

    Returns:
        an array of the stored shape in native byte order (uint8 images stay uint8).
    """
    path = Path(path)
    fix = f"re-fetch the file (delete {path} and load the dataset again)"
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except OSError as e:  # gzip.BadGzipFile is an OSError too
        raise DKError(f"cannot read IDX file {path} ({type(e).__name__}: {e})", fix) from e
    except (EOFError, zlib.error) as e:
        raise DKError(
            f"IDX file {path} is a truncated or corrupt gzip ({type(e).__name__}: {e})", fix
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DKError(
            f"{path} is not an IDX file (magic {raw[:4].hex() or 'empty'}, expected 0000 + dtype + "
            "ndim)",
            fix,
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DKError(
            f"IDX file {path} has unknown dtype code 0x{code:02x}",
            f"expected one of {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}; {fix}",
        )
    if ndim == 0:
        raise DKError(f"IDX file {path} declares 0 dimensions", fix)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DKError(
            f"IDX file {path} ends inside its header ({len(raw)} bytes, header needs {header})", fix
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DKError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header {shape} "
            f"{dtype.name} needs {expected}",
            fix,
        )
    if expected == 0:
        return np.empty(shape, dtype=dtype.newbyteorder("="))
    # astype copies into a writable, native-endian array that no longer pins the file's bytes.
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )
