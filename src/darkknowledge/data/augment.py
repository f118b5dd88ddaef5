"""Input jitter: random integer translations, fresh for every presentation of an image.

Hinton et al. (2015, §3) train the MNIST teacher on inputs "jittered by up to two pixels in any
direction".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError


def jitter(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own (dx, dy), uniform on {-k..k}², filling the uncovered border with
    0.

    ``out[b, y, x] = images[b, y - dy_b, x - dx_b]`` where that pixel exists, else 0. One pad and
    one gather for the whole batch: no per-image Python work, no host sync.

    Args:
        images: (B, H, W) any dtype.
        max_shift: k >= 0; 0 returns ``images`` itself.
        generator: on the same device as ``images`` (the draw stays on the device, no sync).
    Returns:
        (B, H, W) same dtype and device.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise DKError(
            f"jitter max_shift={max_shift!r} is not a non-negative int",
            "use a shift in pixels such as 2, or 0 for none",
        )
    if images.dim() != 3:
        raise DKError(
            f"jitter expects images of shape (B, H, W), got {tuple(images.shape)}",
            "jitter a batch of 2-D images",
        )
    if not _same_device(generator.device, images.device):
        raise DKError(
            f"jitter generator is on {generator.device} but images are on {images.device}",
            f"create it with torch.Generator(device={str(images.device)!r})",
        )
    if max_shift == 0:
        return images
    shifts = torch.randint(
        -max_shift, max_shift + 1, (images.shape[0], 2), generator=generator, device=images.device
    )
    return shift_images(images, shifts, max_shift)


def shift_images(images: torch.Tensor, shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``out[b, y, x] = images[b, y - dy_b, x - dx_b]`` where that pixel exists, else 0.

    Args:
        images: (B, H, W) any dtype.
        shifts: (B, 2) integer ``(dx, dy)`` per image, each in ``[-max_shift, max_shift]``.
    """
    k = max_shift
    b, h, w = images.shape
    dx, dy = shifts[:, 0:1], shifts[:, 1:2]
    # In the k-padded image, source pixel (y - dy, x - dx) sits at (y - dy + k, x - dx + k), always
    # inside.
    padded = F.pad(images, (k, k, k, k))
    rows = torch.arange(h, device=images.device) + k - dy  # (B, H)
    cols = torch.arange(w, device=images.device) + k - dx  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def _same_device(a: torch.device, b: torch.device) -> bool:
    # A generator made with device="cuda" reports cuda:0; compare the resolved index when both have
    # one.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)
