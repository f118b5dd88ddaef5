"""Operators a training step dispatches: a launch count that needs no GPU.

    .venv/bin/python benchmarks/op_count.py [--cell teacher_1200|student] [KEY=VALUE ...]

Runs one epoch of the cell's config on 6,000 images (tiny hidden layers: the count does not depend
on width) under a ``TorchDispatchMode`` and counts, over 20 steady-state steps, the ATen operators
each step dispatches. Views (reshape, slice, transpose, ...) launch nothing; every other operator is
about one kernel launch on CUDA, where launches, not arithmetic, bound these small nets' steps.
Prints the count per step and the operators by frequency. Numbers, not tests.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

VIEWS = (
    "view",
    "t.default",
    "transpose",
    "expand",
    "slice",
    "select",
    "alias",
    "as_strided",
    "unsqueeze",
    "squeeze",
    "reshape",
    "_unsafe_view",
    "narrow",
    "detach",
    "permute",
)
FIRST, STEPS = 20, 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=["teacher_1200", "student"], default="teacher_1200")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dk-opcount-"))
    dk = bench.DK("cpu", scratch, [])
    if args.cell == "teacher_1200":
        base, kind = bench.cell_run("teacher_1200"), "train"
    else:
        teacher = bench.save_untrained(bench.cell_run("teacher_1200")["model"], scratch / "teacher")
        base, kind = (
            bench.distill_base(teacher, "precompute", scratch / "store" / "outputs.safetensors"),
            "distill",
        )
        bench.build_store(dk, base, 6000, torch.device("cpu"))
    counts: collections.Counter[str] = collections.Counter()
    steps = [0]

    def count_step(*_args) -> None:
        steps[0] += 1

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if FIRST <= steps[0] < FIRST + STEPS:
                counts[str(func)] += 1
            return func(*args, **(kwargs or {}))

    handle = register_optimizer_step_post_hook(count_step)
    try:
        with Count():
            dk.run(
                base,
                bench.common_overrides("cpu", 6000, 1, ["model.hidden=[8,8]", *args.overrides]),
                kind,
            )
    finally:
        handle.remove()
    launches = {k: v for k, v in counts.items() if not any(x in k for x in VIEWS)}
    print(
        f"{args.cell}: {sum(counts.values()) / STEPS:.0f} operators per step, "
        f"{sum(launches.values()) / STEPS:.0f} of them not views (≈ kernel launches on CUDA)"
    )
    for name, n in sorted(launches.items(), key=lambda kv: -kv[1]):
        print(f"  {n / STEPS:5.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
