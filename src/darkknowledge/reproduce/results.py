"""Measured rows (``results.csv``) and the paper's numbers (``claims.yaml``) as data."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from darkknowledge.data import atomic_write_bytes
from darkknowledge.errors import DKError

COLUMNS = [
    "cell",
    "variant",
    "scale",
    "seed",
    "device",
    "metric",
    "value",
    "wall_seconds",
    "git_sha",
    "date",
    "config_hash",
]


def read_results(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# A measurement is the value a run (its config hash) gave for a cell's metric; when, where and by
# which commit it was recorded is not part of it.
MEASUREMENT = ("cell", "variant", "scale", "seed", "metric", "value", "config_hash")


def append_results(path: str | Path, rows: list[dict[str, Any]]) -> int:
    """Append the rows that are new measurements, atomically (temp file + rename); return how many.

    A row whose measurement is already in the file (a finished run reused by a later command) is
    not written again, so every row keeps the commit and date of the command that measured it.
    """
    path = Path(path)
    old = read_results(path)
    known = {tuple(str(r.get(k, "")) for k in MEASUREMENT) for r in old}
    rows = [r for r in rows if tuple(str(r.get(k, "")) for k in MEASUREMENT) not in known]
    if not rows:
        return 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in old + rows:
        w.writerow({k: row.get(k, "") for k in COLUMNS})
    try:
        atomic_write_bytes(path, buf.getvalue().encode())
    except OSError as exc:
        raise DKError(
            f"cannot write {path} ({os.strerror(exc.errno or 0)})",
            "make the experiment folder writable or pass --root to a writable copy",
        ) from None
    return len(rows)


@dataclass(frozen=True)
class Claim:
    cell: str
    metric: str
    value: float | None
    unit: str
    section: str
    tolerance: float | None
    target: dict[str, dict[str, Any]] | None = (
        None  # scale → its target (claims.yaml's header says how)
    )
    note: str = ""


def read_claims(path: str | Path) -> list[Claim]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise DKError(
            f"cannot read claims file {path} ({exc.__class__.__name__})",
            "restore experiments/<name>/claims.yaml",
        ) from None
    return [Claim(**c) for c in raw]


def latest(rows: list[dict[str, str]], scale: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """(cell, variant, metric) → {seed: value}, the most recent row per seed at ``scale``."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for r in rows:
        if r["scale"] != scale:
            continue
        out.setdefault((r["cell"], r["variant"], r["metric"]), {})[r["seed"]] = float(r["value"])
    return out


def devices(rows: list[dict[str, str]], scale: str) -> list[str]:
    return sorted({r["device"] for r in rows if r["scale"] == scale})
