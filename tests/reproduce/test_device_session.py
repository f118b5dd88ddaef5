"""scripts/device_session.sh, the prepared GPU-session script, run end to end on CPU at a tiny
size.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from darkknowledge.provenance import source_sha

REPO = Path(__file__).resolve().parents[2]
TINY = (
    "data.train_size=600 data.test_size=1000 data.validation_size=200 model.hidden=[32,32] "
    "optim.epochs=1 eval_every=1 checkpoint_every=1"
)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("bash", "timeout", "tar")),
    reason="needs bash, timeout and tar",
)


def _copy_tree(dst: Path) -> Path:
    """The parts of the repository the script uses (not a git checkout, like the device's copy)."""
    shutil.copytree(REPO / "scripts", dst / "scripts")
    shutil.copytree(
        REPO / "experiments" / "hinton2015" / "configs",
        dst / "experiments" / "hinton2015" / "configs",
    )
    shutil.copytree(
        REPO / "experiments" / "hinton2015" / "shipped",
        dst / "experiments" / "hinton2015" / "shipped",
    )
    for f in ("claims.yaml", "README.md"):
        shutil.copy(REPO / "experiments" / "hinton2015" / f, dst / "experiments" / "hinton2015" / f)
    return dst


def _script(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(root / "scripts" / "device_session.sh"), *args],
        cwd=root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_session_runs_its_stages_packs_its_results_and_collect_merges_them(tmp_path):
    there, here, out = (
        _copy_tree(tmp_path / "there"),
        _copy_tree(tmp_path / "here"),
        tmp_path / "out",
    )
    done = _script(
        there,
        "run",
        "preflight",
        "teacher",
        "nonsense",
        OUT=str(out),
        SCALE="smoke",
        SEEDS="2",
        OVERRIDES=TINY,
        DARKKNOWLEDGE_GIT_SHA="abc123",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "session.log").read_text()
    assert "no CUDA device: train_step=eager" in done.stdout
    assert "== teacher: exit 0" in log and "== unknown stage nonsense" in log
    rows = _rows(out / "results.csv")
    teacher = {
        r["seed"] for r in rows if r["cell"] == "teacher_1200" and r["metric"] == "test_errors"
    }
    # rows name the commit of the code that trained them (here the installed checkout's)
    assert teacher == {"0", "1"} and all(
        r["git_sha"] == source_sha() and r["scale"] == "smoke-custom" for r in rows
    )
    # each finished teacher comes back as one file, to be carried into the next session
    for k in (
        0,
        1,
    ):
        with tarfile.open(out / f"teacher-seed{k}.tar") as t:
            assert {Path(n).name for n in t.getnames()} == {
                "model.safetensors",
                "summary.json",
                "config.yaml",
            }
    with tarfile.open(out / "meta.tar.gz") as t:
        names = t.getnames()
        assert any("seed0/teacher_1200_seeds-" in n for n in names)  # the batched run's summary
        assert "experiments/hinton2015/README.md" in names

    merged = _script(here, "collect", str(out))
    assert merged.returncode == 0, merged.stderr[-2000:]
    assert f"{len(rows)} new rows appended" in merged.stdout
    assert _rows(here / "experiments" / "hinton2015" / "results.csv") == rows
    assert sorted(p.name for p in (here / ".dkcarry").iterdir()) == [
        "teacher-seed0.tar",
        "teacher-seed1.tar",
    ]
    again = _script(here, "collect", str(out))  # collecting twice adds nothing
    assert "0 new rows appended" in again.stdout


def test_a_stage_past_the_deadline_is_skipped_and_the_results_are_still_packed(tmp_path):
    there, out = _copy_tree(tmp_path / "there"), tmp_path / "out"
    done = _script(
        there, "run", "teacher", OUT=str(out), SCALE="smoke", OVERRIDES=TINY, BUDGET_S="30"
    )
    assert done.returncode == 0
    assert "== teacher: skipped" in (out / "session.log").read_text()
    assert (out / "session.log").exists() and (out / "meta.tar.gz").exists()
