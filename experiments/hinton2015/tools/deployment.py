"""The deployment table: what each MNIST model of the table costs to serve, measured.

    .venv/bin/python experiments/hinton2015/tools/deployment.py [--scale cpu] [--runs-root
    runs/hinton2015]

For the teacher and the 800-800 students of a scale (seed 0, the runs behind the current rows of
results.csv), exports each to ONNX with ``dk export`` (fp32 and dynamic int8; logits checked
against PyTorch), and appends to ``deployment.csv`` one row per model and runtime: parameters,
size on disk, test errors, ECE, CPU latency p50/p95 at batch 1 and 64 (one thread), with the
machine, git SHA and date. ``dk reproduce`` then shows the table in the README. Run it alone:
timings taken while another process computes are not the machine's.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path

from darkknowledge.export import export
from darkknowledge.provenance import source_sha
from darkknowledge.reproduce.results import read_results

EXP = Path(__file__).resolve().parents[1]
CELLS = ("teacher_1200", "student_800_soft_T20", "student_800_logit_matching", "student_800_hard")
COLUMNS = [
    "cell",
    "scale",
    "runtime",
    "parameters",
    "bytes",
    "test_errors",
    "ece",
    "b1_p50_ms",
    "b1_p95_ms",
    "b64_p50_ms",
    "b64_p95_ms",
    "threads",
    "machine",
    "git_sha",
    "date",
]


def run_dir_of(cell: str, scale: str, runs_root: Path) -> Path:
    """The run behind the cell's current test_errors row (its config hash names the directory)."""
    rows = [
        r
        for r in read_results(EXP / "results.csv")
        if r["cell"] == cell
        and r["scale"] == scale
        and r["seed"] == "0"
        and r["metric"] == "test_errors"
        and not r["variant"]
    ]
    if not rows:
        sys.exit(
            f"deployment: no {scale} row of {cell} in results.csv; run dk reproduce hinton2015 "
            f"--scale {scale} first"
        )
    found = sorted(runs_root.glob(f"{scale}/seed0/{cell}-{rows[-1]['config_hash']}*"))
    if not found:
        sys.exit(
            f"deployment: the run of {cell} ({rows[-1]['config_hash']}) is not under "
            f"{runs_root}/{scale}/seed0"
        )
    return found[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="cpu")
    p.add_argument("--runs-root", default="runs/hinton2015")
    p.add_argument("--repeats", type=int, default=300)
    args = p.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {platform.system()}"
    date, sha = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), source_sha()
    out_rows = []
    for cell in CELLS:
        run_dir = run_dir_of(cell, args.scale, Path(args.runs_root))
        ece = json.loads((run_dir / "summary.json").read_text())["eval"]["test"]["ece"]
        with tempfile.TemporaryDirectory() as tmp:
            report = export(run_dir, tmp, quantize="dynamic-int8", threads=1, repeats=args.repeats)
        for runtime, r, size in (
            ("pytorch", report["pytorch"], (run_dir / "model.safetensors").stat().st_size),
            ("onnx", report["onnx"], report["onnx"]["bytes"]),
            ("onnx-int8", report["int8"], report["int8"]["bytes"]),
        ):
            out_rows.append(
                {
                    "cell": cell,
                    "scale": args.scale,
                    "runtime": runtime,
                    "parameters": report["parameters"],
                    "bytes": size,
                    "test_errors": r["test_errors"],
                    "ece": round(ece, 4) if runtime != "onnx-int8" else "",
                    "b1_p50_ms": round(r["batch_1"]["p50_ms"], 4),
                    "b1_p95_ms": round(r["batch_1"]["p95_ms"], 4),
                    "b64_p50_ms": round(r["batch_64"]["p50_ms"], 4),
                    "b64_p95_ms": round(r["batch_64"]["p95_ms"], 4),
                    "threads": 1,
                    "machine": machine,
                    "git_sha": sha,
                    "date": date,
                }
            )
        print(
            f"{cell}: {report['parameters']:,} parameters, {report['pytorch']['test_errors']} test "
            f"errors; batch 1 p50 {report['pytorch']['batch_1']['p50_ms']:.3f} ms (PyTorch), "
            f"{report['onnx']['batch_1']['p50_ms']:.3f} ms (ONNX), "
            f"{report['int8']['batch_1']['p50_ms']:.3f} ms (int8, "
            f"{report['int8']['test_errors_change']:+d} errors)",
            flush=True,
        )
    path = EXP / "deployment.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerows(out_rows)
    print(f"{len(out_rows)} rows appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
