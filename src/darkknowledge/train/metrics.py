"""Per-step metrics as JSON lines (``metrics.jsonl`` in the run directory).

A killed run can leave a half-written last line; readers skip lines that do not parse, and a
resumed run rewrites the file (atomically) without them and without anything logged after the
checkpoint it resumes from, so the log of a resumed run equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from darkknowledge.data import atomic_write_bytes
from darkknowledge.errors import DKError, writing


def _records(path: Path) -> list[tuple[str, dict[str, Any] | None]]:
    out: list[tuple[str, dict[str, Any] | None]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None  # a half-written line from a killed run
        out.append((line, rec if isinstance(rec, dict) else None))
    return out


class MetricsLog:
    """Append-only JSONL log, flushed per line; resumable (lines past a checkpoint are dropped).

    With ``tensorboard=True`` every line is mirrored as TensorBoard scalars under
    ``<run_dir>/tensorboard`` (training terms as ``train/<name>``, evaluations as
    ``<split>/<name>``, a batched run's K values as ``<tag>/<k>``); a resumed run purges the
    events logged after its checkpoint, as the JSONL log drops those lines.
    """

    def __init__(self, path: str | Path, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self._f = None
        self._tb: Any = None
        self._tb_on, self._purge = tensorboard, None

    def reset(self) -> None:
        """Start an empty log (a fresh run in a directory left by a run killed before its first
        checkpoint).
        """
        self.close()
        if self.path.exists():
            with writing(self.path):
                atomic_write_bytes(self.path, b"")

    def truncate_after(self, step: int, epoch: int | None = None) -> None:
        """Keep only what was logged up to the checkpoint at ``step`` (and ``epoch``).

        Training lines with ``step ≤ step`` are kept. Evaluation lines (they carry ``split``) at
        ``step`` are kept only if their ``epoch`` is at most ``epoch``: a checkpoint taken at the
        last step of an epoch but before its evaluation re-runs that evaluation on resume.
        """
        if not self.path.exists():
            return
        self.close()
        kept = []
        for line, rec in _records(self.path):
            if rec is None:
                continue
            s = rec.get("step", 0)
            if s > step:
                continue
            if "split" in rec and epoch is not None and s == step and rec.get("epoch", 0) > epoch:
                continue
            kept.append(line)
        with writing(self.path):
            atomic_write_bytes(self.path, "".join(k + "\n" for k in kept).encode())
        self._purge = step + 1

    def write(self, record: dict[str, Any]) -> None:
        with writing(self.path):
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across steps
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
        if self._tb_on:
            self._mirror(record)

    def _mirror(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            self._tb = tensorboard_writer(self.path.parent / "tensorboard", self._purge)
        step = int(record.get("step", 0))
        group = record.get("split", "train")
        for key, value in record.items():
            if key in ("step", "epoch", "split", "n"):
                continue
            if isinstance(value, list):
                for k, v in enumerate(value):
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb.add_scalar(f"{group}/{key}/{k}", v, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{group}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass  # a failed flush of a line already reported by write()
            self._f = None


def tensorboard_writer(logdir: Path, purge_step: int | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` (a :class:`DKError` naming the fix when tensorboard is
    absent).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DKError(
            "tensorboard=true needs the tensorboard package",
            'install it (pip install -e ".[tensorboard]"), or leave tensorboard off: metrics.jsonl '
            "has every line",
        ) from None
    return SummaryWriter(str(logdir), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics log; lines that do not parse (a killed writer's last line) are
    skipped with a warning.
    """
    out, bad = [], 0
    for _, rec in _records(Path(path)):
        if rec is None:
            bad += 1
        else:
            out.append(rec)
    if bad:
        warnings.warn(
            f"{path}: skipped {bad} unreadable line(s) (a run killed mid-write)", stacklevel=2
        )
    return out


class NullLog:
    """A :class:`MetricsLog` that writes nothing (ranks other than 0; runs without a run_dir)."""

    def reset(self) -> None:
        pass

    def truncate_after(self, step: int, epoch: int | None = None) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
