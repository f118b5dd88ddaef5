"""metrics.jsonl: appended per step, tolerant of a killed writer's half line, truncated on
resume.
"""

from __future__ import annotations

import json

import pytest

from darkknowledge.train.metrics import MetricsLog, read_metrics


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_write_appends_and_flushes(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "m.jsonl")
    log.write({"step": 1, "loss": 2.0})
    assert read_metrics(tmp_path / "sub" / "m.jsonl") == [
        {"step": 1, "loss": 2.0}
    ]  # visible before close
    log.write({"step": 2, "loss": 1.0})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "sub" / "m.jsonl")] == [1, 2]


def test_read_skips_a_half_written_last_line_with_a_warning(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": 1}, {"step": 2}], tail='{"step": 3, "lo')
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        assert read_metrics(path) == [{"step": 1}, {"step": 2}]


def test_truncate_after_drops_later_lines_and_the_half_line(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": s, "epoch": 0} for s in range(1, 6)], tail='{"step": 6')
    log = MetricsLog(path)
    log.truncate_after(3)
    assert read_metrics(path) == [{"step": s, "epoch": 0} for s in (1, 2, 3)]
    log.write({"step": 4, "epoch": 0})
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_truncate_keeps_an_evaluation_only_if_the_checkpoint_followed_it(tmp_path):
    path = tmp_path / "m.jsonl"
    records = [
        {"step": 10, "epoch": 0, "loss": 1.0},
        {"step": 10, "epoch": 1, "split": "test", "errors": 3},
    ]
    _write(path, records)
    MetricsLog(path).truncate_after(10, epoch=1)  # checkpoint after the epoch-end evaluation
    assert read_metrics(path) == records
    # checkpoint at the last step, before the evaluation
    MetricsLog(path).truncate_after(10, epoch=0)
    assert read_metrics(path) == records[:1]


def test_reset_empties_a_stale_log(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": 1}])
    MetricsLog(path).reset()
    assert read_metrics(path) == []
    MetricsLog(tmp_path / "absent.jsonl").reset()
    assert not (tmp_path / "absent.jsonl").exists()
