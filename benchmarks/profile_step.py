"""Where one training step's time goes: a torch.profiler summary of steady-state steps.

    .venv/bin/python benchmarks/profile_step.py [--cell teacher_1200|student] [--device cpu|cuda]
        [--skip 200] [--steps 50] [--out DIR] [KEY=VALUE ...]

Runs a cell's config through ``darkknowledge.train.run`` (the teacher recipe, or the T = 20 student
with stored outputs of an untrained teacher), skips ``--skip`` optimizer steps (warm-up,
compilation,
CUDA-graph capture), profiles the next ``--steps`` and prints:

* wall time per step (host clock between optimizer steps, the device synchronized at both ends);
* on CUDA: device busy time per step (the sum of kernel times) and kernels launched per step. A
  step whose wall time is far above its busy time is bound by the host: launches and Python, which
  a whole-step CUDA graph would remove;
* the operators with the most host time, and on CUDA the kernels with the most device time.

``--out DIR`` also writes ``profile-<cell>-<device>.txt`` with the same text. Numbers, not tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the benchmark harness: configs and an untrained teacher)


def base_config(cell: str, scratch: Path, device: torch.device) -> tuple[dict, str]:
    if cell == "teacher_1200":
        return bench.cell_run("teacher_1200"), "train"
    teacher_file = bench.save_untrained(
        bench.cell_run("teacher_1200")["model"], scratch / "teacher"
    )
    base = bench.distill_base(teacher_file, "precompute", scratch / "store" / "outputs.safetensors")
    return base, "distill"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=["teacher_1200", "student"], default="teacher_1200")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip", type=int, default=200, help="optimizer steps before profiling")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps profiled")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train_step=cuda_graph")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    scratch = Path(tempfile.mkdtemp(prefix="dk-profile-"))
    base, kind = base_config(args.cell, scratch, device)
    steps_per_epoch = -(-args.train_size // base["optim"]["batch_size"])
    epochs = -(-(args.skip + args.steps + 1) // steps_per_epoch)
    overrides = [*bench.common_overrides(args.device, args.train_size, epochs, []), *args.overrides]
    if kind == "distill":
        bench.build_store(bench.DK(args.device, scratch, []), base, args.train_size, device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(
        activities=activities,
        schedule=schedule(wait=args.skip, warmup=1, active=args.steps, repeat=1),
    )
    marks: list[float] = []

    def after_step(_opt, _args, _kwargs) -> None:  # every optimizer step advances the profiler
        # the marks the wall time uses
        if len(marks) in (args.skip, args.skip + args.steps) and cuda:
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())
        prof.step()

    handle = register_optimizer_step_post_hook(after_step)
    try:
        with prof:
            bench.DK(args.device, scratch, []).run(base, overrides, kind)
    finally:
        handle.remove()
    if len(marks) < args.skip + 1 + args.steps:
        print(
            f"only {len(marks)} steps ran; lower --skip/--steps or raise --train-size",
            file=sys.stderr,
        )
        return 2
    wall = (marks[args.skip + args.steps] - marks[args.skip]) / args.steps

    events = prof.key_averages()
    lines = [
        f"profile of {args.cell} on {device} "
        f"({torch.cuda.get_device_name(device) if cuda else 'cpu'}), torch {torch.__version__}, "
        f"overrides {' '.join(args.overrides) or '(none)'}; {args.steps} steps after {args.skip}",
        f"wall time per step: {wall * 1e6:.0f} us ({base['optim']['batch_size'] / wall:,.0f} "
        "samples/s)",
    ]
    if cuda:
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / args.steps  # microseconds
        lines.append(
            f"device busy per step: {busy:.0f} us ({100 * busy / (wall * 1e6):.0f}% of the wall "
            f"time); kernels per step: {len(kernels) / args.steps:.1f}"
        )
        lines += [
            "",
            "kernels by device time:",
            events.table(sort_by="self_device_time_total", row_limit=15),
        ]
    lines += [
        "",
        "operators by host time:",
        events.table(sort_by="self_cpu_time_total", row_limit=20),
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile-{args.cell}-{device.type}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
