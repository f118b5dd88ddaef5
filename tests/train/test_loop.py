"""The loop: finite-loss guard, gradient accumulation, max-norm, what a run directory holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from darkknowledge.config import load_config
from darkknowledge.errors import DKError, NonFiniteLossError
from darkknowledge.models import load_model
from darkknowledge.train import run
from darkknowledge.train.checkpoint import list_checkpoints, read_checkpoint
from darkknowledge.train.loop import _check_finite
from darkknowledge.train.metrics import read_metrics


def test_check_finite_names_step_batch_and_component():
    ok = torch.tensor(1.0)
    _check_finite(ok, {"soft": ok, "hard": ok}, step=0, epoch=0, batch=0)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at step 8 \(epoch 2, batch 3\): loss=nan, hard=inf",
    ):
        _check_finite(
            torch.tensor(float("nan")),
            {"soft": ok, "hard": torch.tensor(float("inf"))},
            step=7,
            epoch=2,
            batch=3,
        )


def test_absurd_learning_rate_stops_with_a_clear_message(make_cfg):
    cfg = make_cfg("optim.lr=1e30", "optim.schedule=constant", "checkpoint_every_steps=1")
    with pytest.raises(NonFiniteLossError) as err:
        run(cfg)
    msg = str(err.value)
    assert "non-finite" in msg and "step " in msg and "epoch 0" in msg and "lower optim.lr" in msg
    assert "\n" not in msg
    # no checkpoint holds non-finite weights, and no model or summary was written
    for path in list_checkpoints(f"{cfg.run_dir}/checkpoints"):
        assert all(torch.isfinite(v).all() for v in read_checkpoint(path)["model"].values())
    assert not (Path(cfg.run_dir) / "model.safetensors").exists()
    assert not (Path(cfg.run_dir) / "summary.json").exists()


def _weights(run_dir):
    return load_model(run_dir).state_dict()


def test_gradient_accumulation_equals_one_large_batch(make_cfg):
    """batch 100 in chunks of 30 (30+30+30+10), and the last batch of 50 in 30+20, equals whole
    batches.
    """
    common = [
        "data.train_size=250",
        "optim.batch_size=100",
        "optim.epochs=2",
        "optim.name=sgd",
        "optim.lr=0.5",
    ]
    whole = make_cfg(*common, name="whole")
    chunked = make_cfg(*common, "optim.micro_batch_size=30", name="chunked")
    run(whole)
    run(chunked)
    a, b = _weights(whole.run_dir), _weights(chunked.run_dir)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    la = [r["loss"] for r in read_metrics(f"{whole.run_dir}/metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(f"{chunked.run_dir}/metrics.jsonl") if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-5)


def test_max_norm_is_applied_every_step(make_cfg):
    cfg = make_cfg("model.max_norm=0.5", "optim.name=paper_dropout", "optim.lr=10.0")
    run(cfg)
    model = load_model(cfg.run_dir)
    for w in model.max_norm_weights():
        assert float(w.detach().norm(dim=1).max()) <= 0.5 * (1 + 1e-5)


def test_run_directory_contents_and_resolved_config(make_cfg):
    cfg = make_cfg("seed=3", "data.validation_size=50", "select_best_on=valid")
    summary = run(cfg)
    root = Path(cfg.run_dir)
    assert sorted(p.name for p in root.iterdir()) == [
        ".darkknowledge-run",
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]
    saved = load_config(root / "config.yaml")
    assert saved == cfg and saved.hash() == cfg.hash() == summary["config_hash"]
    assert set(summary["eval"]) == {"valid", "test"}
    assert summary["steps"] == 10 and summary["epochs"] == 2 and summary["best_epoch"] in (1, 2)
    steps = [r["step"] for r in read_metrics(root / "metrics.jsonl") if "split" not in r]
    assert steps == list(range(1, 11))


def test_resume_never_refuses_a_used_run_dir(make_cfg):
    cfg = make_cfg("optim.epochs=1")
    run(cfg)
    with pytest.raises(DKError, match="already holds a run.*--resume auto"):
        run(cfg)


def test_resume_auto_in_an_empty_or_missing_dir_starts_fresh(make_cfg):
    cfg = make_cfg("optim.epochs=1")
    summary = run(cfg, resume="auto")
    assert summary["steps"] == 6


def test_a_fresh_start_discards_a_stale_log(make_cfg):
    """A run killed before its first checkpoint leaves metrics.jsonl; the next start must not append
    to it.
    """
    cfg = make_cfg("optim.epochs=1")
    Path(cfg.run_dir).mkdir(parents=True)
    # written first by every run
    (Path(cfg.run_dir) / ".darkknowledge-run").write_text("pid 1 on host since then\n")
    (Path(cfg.run_dir) / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "lo')
    run(cfg, resume="auto")
    losses = [r["loss"] for r in read_metrics(Path(cfg.run_dir) / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 6 and 99.0 not in losses


def test_resume_auto_on_a_finished_run_returns_its_summary_untouched(make_cfg):
    cfg = make_cfg("optim.epochs=1")
    summary = run(cfg)
    root = Path(cfg.run_dir)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    again = run(cfg, resume="auto")
    assert again == summary
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()
    } == before


def test_resume_auto_finishes_a_run_killed_after_its_last_checkpoint(make_cfg):
    """Killed between the final checkpoint and the model/summary writes: resume evaluates and
    saves.
    """
    cfg = make_cfg("optim.epochs=1")
    run(cfg)
    root = Path(cfg.run_dir)
    reference = (root / "model.safetensors").read_bytes()
    (root / "model.safetensors").unlink()
    (root / "summary.json").unlink()
    summary = run(cfg, resume="auto")
    assert summary["steps"] == 6
    assert (root / "model.safetensors").read_bytes() == reference


def test_resume_auto_refuses_a_model_without_checkpoints(make_cfg):
    import shutil

    cfg = make_cfg("optim.epochs=1")
    run(cfg)
    shutil.rmtree(f"{cfg.run_dir}/checkpoints")
    with pytest.raises(DKError, match="holds a model but no checkpoint"):
        run(cfg, resume="auto")


def test_deterministic_flag_is_restored_after_the_run(make_cfg):
    assert not torch.are_deterministic_algorithms_enabled()
    run(make_cfg("deterministic=true", "optim.epochs=1"))
    assert not torch.are_deterministic_algorithms_enabled()
