import gzip
import struct

import numpy as np
import pytest

from darkknowledge.data import read_idx
from darkknowledge.errors import DKError


def _idx(array: np.ndarray, code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("code", "array"),
    [
        (0x08, np.arange(24, dtype=np.uint8).reshape(2, 3, 4)),
        (0x08, np.array([9, 0, 3], dtype=np.uint8)),
        (0x09, np.array([-128, 0, 127], dtype=np.int8)),
        (0x0B, np.array([[-300, 2], [3, 30000]], dtype=np.int16)),
        (0x0C, np.array([-(2**31), 2**31 - 1], dtype=np.int32)),
        (0x0D, np.array([0.5, -1.25], dtype=np.float32)),
        (0x0E, np.array([1e300, -2.0], dtype=np.float64)),
        (0x08, np.zeros((0, 28, 28), dtype=np.uint8)),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_round_trip(tmp_path, code, array, gzipped):
    data = _idx(array, code)
    path = tmp_path / ("x.idx.gz" if gzipped else "x.idx")
    path.write_bytes(gzip.compress(data) if gzipped else data)
    out = read_idx(path)
    assert out.shape == array.shape and out.dtype == array.dtype and out.dtype.isnative
    assert np.array_equal(out, array)
    if out.size:
        out.flat[0] = out.flat[0]  # writable


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown dtype code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "ends inside its header"),
        (
            b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06",
            r"holds 2 data bytes but its header \(3,\) uint8 needs 3",
        ),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "holds 2 data bytes"),
        (b"\x00\x00\x0c\x01\x00\x00\x00\x01\x05\x06", r"needs 4"),
    ],
)
def test_malformed_is_a_dkerror(tmp_path, data, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(DKError, match=match):
        read_idx(path)


def test_corrupt_gzip_and_missing_file(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(100, np.uint8), 0x08))[:-10])
    with pytest.raises(DKError, match="corrupt gzip|cannot read"):
        read_idx(path)
    with pytest.raises(DKError, match="cannot read IDX file"):
        read_idx(tmp_path / "missing.idx")
