"""Ship a finished cpu-scale teacher run as the smoke scale's teacher
(``shipped/teacher_1200_cpu``).

    .venv/bin/python experiments/hinton2015/tools/ship_teacher.py
    runs/hinton2015/cpu/seed0/teacher_1200-<hash>

Copies the run's ``model.safetensors``, ``config.yaml`` and ``summary.json`` (with the model's
sha256 added, which ``dk reproduce`` verifies before using it). The run must be the cpu scale's
teacher of the current configs (its config hash is checked) and the model file must stay under
10 MB. Replace the shipped teacher rarely: every version stays in the repository's history.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

EXP = Path(__file__).resolve().parents[1]
LIMIT = 10_000_000  # bytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run of teacher_1200 at cpu scale")
    args = p.parse_args(argv)

    from darkknowledge.config import read_yaml
    from darkknowledge.reproduce.runner import Context, load_cells

    cells = load_cells(EXP)
    src = args.run_dir
    try:
        summary = json.loads((src / "summary.json").read_text())
        lr = read_yaml(src / "config.yaml")["optim"]["lr"]  # the step size its select: chose
    except (OSError, ValueError, KeyError) as exc:
        print(
            f"ship_teacher: error: {src} holds no finished run ({exc.__class__.__name__}); give "
            "the run directory of a finished teacher",
            file=sys.stderr,
        )
        return 2
    expected = Context(
        EXP, cells, "cpu", seed=0, overrides=[], device="auto", runs_root=Path("runs")
    ).config(cells["teacher_1200"], [f"optim.lr={lr}"])
    if (
        summary.get("config_hash") != expected.hash()
        or lr not in cells["teacher_1200"].select["values"]
    ):
        print(
            f"ship_teacher: error: {src} is not the cpu scale's teacher_1200 of these configs "
            "(config hash differs); run `dk reproduce hinton2015 --scale cpu --only teacher_1200` "
            "first",
            file=sys.stderr,
        )
        return 2
    size = (src / "model.safetensors").stat().st_size
    if size > LIMIT:
        print(
            f"ship_teacher: error: the model file is {size:,} bytes, over the {LIMIT:,}-byte limit "
            "for the repository",
            file=sys.stderr,
        )
        return 2
    dst = EXP / "shipped" / "teacher_1200_cpu"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy2(src / name, dst / name)
    summary["model_sha256"] = hashlib.sha256((dst / "model.safetensors").read_bytes()).hexdigest()
    summary["shipped_from"] = str(src)
    (dst / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"shipped {src} -> {dst}: {summary['eval']['test']['errors']} test errors, {size:,} bytes, "
        f"sha256 {summary['model_sha256'][:16]}…, trained at {summary.get('git_sha', '?')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
