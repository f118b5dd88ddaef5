import pytest
import torch

from darkknowledge.data import jitter
from darkknowledge.errors import DKError

K = 2
SHIFTS = [(dx, dy) for dy in range(-K, K + 1) for dx in range(-K, K + 1)]


def _shift(images, dx, dy):
    """Reference: out[y, x] = images[y - dy, x - dx], zero outside, by slicing."""
    _, h, w = images.shape
    out = torch.zeros_like(images)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def _drawn_shifts(images, out):
    """(B,) index into SHIFTS of the shift that maps each image to its output; asserts exactly one
    does.
    """
    # (25, B)
    matches = torch.stack([(_shift(images, dx, dy) == out).flatten(1).all(1) for dx, dy in SHIFTS])
    assert torch.all(matches.sum(0) == 1), "some output is not a single shift of its input"
    return matches.int().argmax(0)


@pytest.fixture
def noise():
    # Pixels in 1..255 so the zero border alone identifies the shift.
    return torch.randint(
        1, 256, (2000, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_each_output_is_a_shift_of_its_input_and_all_shifts_occur(noise):
    out = jitter(noise, K, torch.Generator().manual_seed(1))
    assert out.shape == noise.shape and out.dtype == noise.dtype and out.device == noise.device
    counts = torch.bincount(_drawn_shifts(noise, out), minlength=25)
    assert torch.all(counts > 0)  # all 25 shifts, ~80 each
    assert counts.min() > 40 and counts.max() < 130


def test_zero_fill():
    ones = torch.full((500, 6, 6), 255, dtype=torch.uint8)
    out = jitter(ones, K, torch.Generator().manual_seed(0))
    for (dx, dy), o in zip([SHIFTS[i] for i in _drawn_shifts(ones, out)], out, strict=True):
        assert int((o == 0).sum()) == 36 - (6 - abs(dx)) * (6 - abs(dy))
        assert set(o.unique().tolist()) <= {0, 255}


def test_fresh_draws_per_call(noise):
    noise = noise[:300]
    g = torch.Generator().manual_seed(0)
    first, second = (
        _drawn_shifts(noise, jitter(noise, K, g)),
        _drawn_shifts(noise, jitter(noise, K, g)),
    )
    assert (first != second).float().mean() > 0.9
    again = _drawn_shifts(noise, jitter(noise, K, torch.Generator().manual_seed(0)))
    assert torch.equal(first, again)  # reproducible from the seed


def test_max_shift_zero_is_identity(noise):
    assert jitter(noise, 0, torch.Generator()) is noise


def test_works_on_float_images():
    images = torch.rand(50, 5, 5) + 1
    out = jitter(images, 1, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.all((out == 0) | (out >= 1))


@pytest.mark.parametrize(
    ("images", "k", "match"),
    [
        (torch.zeros(2, 3, 3), -1, "max_shift"),
        (torch.zeros(2, 3, 3), 1.0, "max_shift"),
        (torch.zeros(3, 3), 1, r"\(B, H, W\)"),
    ],
)
def test_bad_arguments(images, k, match):
    with pytest.raises(DKError, match=match):
        jitter(images, k, torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_generator_and_device_mismatch(noise):
    images = noise.cuda()
    out = jitter(images, K, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.device
    _drawn_shifts(noise, out.cpu())
    with pytest.raises(DKError, match="generator is on cpu"):
        jitter(images, K, torch.Generator())
