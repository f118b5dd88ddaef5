"""The hinton2015 experiment: configs resolve, offsets are chosen right, a reduced run works."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from darkknowledge.errors import DKError
from darkknowledge.methods import build_method
from darkknowledge.models import build_model
from darkknowledge.reproduce import best_offset, errors_with_offsets, load_cells, reproduce
from darkknowledge.reproduce.results import COLUMNS, read_claims
from darkknowledge.reproduce.runner import Context, _order

EXP = Path(__file__).resolve().parents[2] / "experiments" / "hinton2015"
CELLS = load_cells(EXP)
TINY = [
    "data.train_size=600",
    "data.test_size=1000",
    "data.validation_size=200",
    "model.hidden=[32,32]",
    "optim.epochs=1",
    "eval_every=1",
    "checkpoint_every=1",
    "progress=false",
]


def test_every_cell_of_the_issue_has_a_config():
    expected = {
        "teacher_1200",
        "student_800_hard",
        "student_800_soft_T20",
        "student_800_logit_matching",
        "temperature_sweep",
        "omit3",
        "only78",
        "soft_regularizer_3pct",
        "ensemble_distill",
        "specialists_mnist100",
        "specialists_synthetic_jft",
    }
    assert set(CELLS) == expected


@pytest.mark.parametrize("scale", ["smoke", "cpu"])
def test_the_ensemble_cell_runs_only_when_named_at_smoke_and_cpu(scale):
    assert "ensemble_distill" not in _order(CELLS, None, scale)  # the main job and the MNIST table
    assert "ensemble_distill" in _order(CELLS, None, "full")
    assert _order(CELLS, ["ensemble_distill"], scale) == ["ensemble_distill"]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "full"])
@pytest.mark.parametrize("cell_id", sorted(CELLS))
def test_config_resolves_at_every_scale(cell_id, scale, tmp_path):
    cell = CELLS[cell_id]
    ctx = Context(EXP, CELLS, scale, seed=0, overrides=[], device="cpu", runs_root=tmp_path)
    if cell.teacher:
        ctx.done[cell.teacher] = {"run_dir": str(tmp_path / "teacher")}
    cfg = ctx.config(cell)
    method = build_method(cfg.method["name"], {k: v for k, v in cfg.method.items() if k != "name"})
    assert method.needs_teacher == bool(cell.teacher) or cell.kind == "regularizer"
    build_model(cfg.model["name"], {k: v for k, v in cfg.model.items() if k != "name"}, 784, 10)
    assert str(tmp_path) in cfg.run_dir and cfg.hash()[:10] in cfg.run_dir
    # the paper's data: all 60k images, all test images, never jitter a student
    if scale in (
        "full",
        "cpu",
    ):
        assert cfg.data.train_size is None and cfg.data.test_size is None
        if cell.teacher:
            assert cfg.data.jitter == 0
    if cell_id == "teacher_1200":
        assert cfg.model["hidden"] == [1200, 1200] and cfg.data.jitter == 2
        assert (
            cfg.model["input_dropout"] == 0.2
            and cfg.model["hidden_dropout"] == 0.5
            and cfg.optim.batch_size == 100
        )
        # the cpu scale changes the teacher's schedule only (SGD + momentum, cosine; PAPER.md [I])
        assert cfg.optim.name == ("sgd" if scale == "cpu" else "paper_dropout")
        assert cfg.optim.epochs == (3000 if scale == "full" else cfg.optim.epochs)


def test_claims_name_known_cells_and_the_paper_numbers():
    claims = read_claims(EXP / "claims.yaml")
    assert {c.cell for c in claims} <= set(CELLS)
    by = {(c.cell, c.metric): c.value for c in claims}
    assert by[("teacher_1200", "test_errors")] == 67
    assert by[("student_800_hard", "test_errors")] == 146
    assert by[("student_800_soft_T20", "test_errors")] == 74
    assert by[("omit3", "test_errors_on_3_test_tuned_offset")] == 14


def test_dependencies_run_first():
    order = _order(CELLS, ["soft_regularizer_3pct"])
    assert order.index("teacher_1200") < order.index("soft_regularizer_3pct")
    assert order.index("student_800_hard") < order.index("soft_regularizer_3pct")


def test_best_offset_finds_the_shift_that_undoes_a_bias():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2000,), generator=g)
    logits = torch.randn(2000, 4, generator=g) + 4.0 * torch.nn.functional.one_hot(labels, 4)
    logits[:, 3] -= 3.0  # class 3 under-predicted, as after omitting it from the transfer set
    offsets = torch.arange(0, 8.01, 0.25)
    off = best_offset(logits, labels, [3], offsets)
    errs = errors_with_offsets(logits, labels, [3], offsets)
    assert 2.0 <= off <= 4.0
    assert errs.min() < errs[0]  # raising the bias helps
    lowered = best_offset(logits, labels, [0, 1, 2], -offsets)
    assert -4.0 <= lowered <= -2.0  # the same fix expressed as lowering the other classes


def test_reduced_reproduction_runs_records_and_reports(tmp_path):
    exp = tmp_path / "experiments" / "hinton2015"
    shutil.copytree(EXP / "configs", exp / "configs")
    shutil.copy(EXP / "claims.yaml", exp / "claims.yaml")
    shutil.copy(EXP / "README.md", exp / "README.md")
    runs = tmp_path / "runs"
    args = dict(
        only=["student_800_soft_T20", "omit3"],
        scale="smoke",
        seeds=1,
        root=str(tmp_path / "experiments"),
        device="cpu",
        overrides=TINY,
        runs_root=str(runs),
        retrain_teacher=True,
    )
    assert reproduce("hinton2015", **args) == 0
    with open(exp / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    got = {(r["cell"], r["metric"]) for r in rows}
    for needed in [
        ("teacher_1200", "test_errors"),
        ("student_800_soft_T20", "test_errors"),
        ("omit3", "test_errors_on_3"),
        ("omit3", "offset_valid"),
        ("omit3", "test_errors_on_3_valid_offset"),
        ("omit3", "test_errors_on_3_test_tuned_offset"),
    ]:
        assert needed in got
    for r in rows:  # TINY changes what the runs compute: labelled apart from the real smoke scale
        assert (
            r["device"] == "cpu"
            and r["seed"] == "0"
            and r["scale"] == "smoke-custom"
            and r["git_sha"]
        )
        assert float(r["wall_seconds"]) > 0
    on3 = {r["metric"]: float(r["value"]) for r in rows if r["cell"] == "omit3"}
    # the test-tuned offset can only help on test
    assert on3["test_errors_on_3_test_tuned_offset"] <= on3["test_errors_on_3"]
    readme = (exp / "README.md").read_text()
    # custom rows stay out of the columns
    assert "| `omit3` | test_errors_on_3" in readme and "(1 seed)" not in readme
    assert f"{len(rows)} rows of runs with overridden settings (`smoke-custom`)" in readme
    assert readme.count("results:start") == 1
    # A second call reuses the finished runs: nothing retrained, and no row written twice (each
    # row keeps the commit and date of the command that measured it).
    mtime = (next(runs.glob("smoke/seed0/teacher_1200-*")) / "model.safetensors").stat().st_mtime_ns
    before = (exp / "results.csv").read_bytes()
    assert reproduce("hinton2015", **args) == 0
    assert (
        next(runs.glob("smoke/seed0/teacher_1200-*")) / "model.safetensors"
    ).stat().st_mtime_ns == mtime
    assert (exp / "results.csv").read_bytes() == before


def _copy_experiment(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments" / "hinton2015"
    shutil.copytree(EXP / "configs", exp / "configs")
    shutil.copy(EXP / "claims.yaml", exp / "claims.yaml")
    shutil.copy(EXP / "README.md", exp / "README.md")
    return exp


def _sweep_rows(exp: Path) -> dict[str, float]:
    with open(exp / "results.csv", newline="") as f:
        return {
            r["variant"]: float(r["value"])
            for r in csv.DictReader(f)
            if r["cell"] == "temperature_sweep" and r["metric"] == "test_errors"
        }


def test_batched_sweep_equals_one_run_per_student(tmp_path):
    """The sweep's students trained as one batched run give the same results as one by one."""
    tiny = [o for o in TINY if not o.startswith("model.hidden")] + ["data.validation_size=0"]
    results = {}
    for batched in (True, False):
        exp = _copy_experiment(tmp_path / str(batched))
        cfg = exp / "configs" / "temperature_sweep.yaml"
        text = cfg.read_text().replace(
            "widths: {smoke: [30, 300], cpu: [30, 300], full: [30, 300, 800]}",
            f"widths: [8, 16]\n  batched: {str(batched).lower()}",
        )
        cfg.write_text(
            text.replace(
                "temperatures: [1, 2, 2.5, 3, 4, 5, 8, 10, 20]", "temperatures: [1, 4, 20]"
            )
        )
        reproduce(
            "hinton2015",
            only=["temperature_sweep"],
            root=str(exp.parent),
            device="cpu",
            overrides=tiny,
            runs_root=str(tmp_path / str(batched) / "runs"),
            retrain_teacher=True,
        )
        results[batched] = _sweep_rows(exp)
    assert set(results[True]) == {f"w{w}_T{t}" for w in (8, 16) for t in (1, 4, 20)}
    for variant, errors in results[False].items():
        assert abs(results[True][variant] - errors) <= 1, variant  # float-tolerance equal models


def test_per_width_overrides_reach_only_their_width(tmp_path):
    tiny = [o for o in TINY if not o.startswith("model.hidden")] + ["data.validation_size=0"]
    exp = _copy_experiment(tmp_path)
    cfg = exp / "configs" / "temperature_sweep.yaml"
    text = cfg.read_text().replace(
        "widths: {smoke: [30, 300], cpu: [30, 300], full: [30, 300, 800]}", "widths: [8, 16]"
    )
    text = text.replace("temperatures: [1, 2, 2.5, 3, 4, 5, 8, 10, 20]", "temperatures: [1, 4]")
    start = text.index("  per_width:")
    cfg.write_text(
        text[:start]
        + "  per_width: {8: {smoke: [optim.lr=0.0123]}, 16: [optim.lr=0.0456]}\n"
        + text[text.index("run:", start) :]
    )
    reproduce(
        "hinton2015",
        only=["temperature_sweep"],
        root=str(exp.parent),
        device="cpu",
        overrides=tiny,
        runs_root=str(tmp_path / "runs"),
        retrain_teacher=True,
    )
    lrs = {
        p.parent.name.split("-")[0]: yaml.safe_load(p.read_text())["optim"]["lr"]
        for p in (tmp_path / "runs").glob("smoke/seed0/temperature_sweep_w*/config.yaml")
    }
    assert lrs == {"temperature_sweep_w8": 0.0123, "temperature_sweep_w16": 0.0456}
    assert set(_sweep_rows(exp)) == {f"w{w}_T{t}" for w in (8, 16) for t in (1, 4)}


def test_a_per_width_override_that_is_no_list_is_refused(tmp_path):
    exp = _copy_experiment(tmp_path)
    cfg = exp / "configs" / "temperature_sweep.yaml"
    text = cfg.read_text()
    start = text.index("  per_width:")
    cfg.write_text(
        text[:start] + "  per_width: {30: optim.lr=0.1}\n" + text[text.index("run:", start) :]
    )
    with pytest.raises(DKError, match="per_width.30 must be a list"):
        reproduce(
            "hinton2015",
            only=["temperature_sweep"],
            root=str(exp.parent),
            device="cpu",
            overrides=TINY,
            runs_root=str(tmp_path / "runs"),
            retrain_teacher=True,
        )


def test_a_diverging_step_size_is_no_candidate(tmp_path):
    exp = _copy_experiment(tmp_path)
    cfg = exp / "configs" / "student_800_hard.yaml"
    cfg.write_text(
        cfg.read_text().replace("values: [0.01, 0.03, 0.1, 0.3]", "values: [1.0e+9, 0.1, 0.03]")
    )
    reproduce(
        "hinton2015",
        only=["student_800_hard"],
        root=str(exp.parent),
        device="cpu",
        overrides=TINY,
        runs_root=str(tmp_path / "runs"),
    )
    with open(exp / "results.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["cell"] == "student_800_hard"]
    assert {r["variant"] for r in rows if r["metric"] == "select_valid_errors"} == {
        "optim.lr=0.1",
        "optim.lr=0.03",
    }
    assert {r["metric"] for r in rows} >= {"selected_optim.lr", "test_errors"}
    # the two that did not diverge trained again as one batched run, not one by one
    assert not list((tmp_path / "runs").glob("smoke/seed0/student_800_hard_select_optim.lr=*"))
    batched = [
        yaml.safe_load(p.read_text())
        for p in (tmp_path / "runs").glob(
            "smoke/seed0/student_800_hard_select_optim.lr-*/config.yaml"
        )
    ]
    assert sorted(c["replicas"]["optim"]["lr"] for c in batched) == [
        [0.1, 0.03],
        [1.0e9, 0.1, 0.03],
    ]


def _rows(exp: Path, cell: str, metric: str) -> dict[str, float]:
    with open(exp / "results.csv", newline="") as f:
        return {
            r["seed"]: float(r["value"])
            for r in csv.DictReader(f)
            if r["cell"] == cell and r["metric"] == metric
        }


def test_seeds_of_a_train_cell_train_as_one_batched_run_equal_to_seed_by_seed(tmp_path):
    """--seeds 2: the teacher's and the hard student's seeds train together, as each would alone;
    the step size is chosen once, on seed 0's validation split, and reused by seed 1."""
    results = {}
    for batched in (True, False):
        exp = _copy_experiment(tmp_path / str(batched))
        runs = tmp_path / str(batched) / "runs"
        reproduce(
            "hinton2015",
            only=["teacher_1200", "student_800_hard"],
            seeds=2,
            root=str(exp.parent),
            device="cpu",
            overrides=TINY,
            runs_root=str(runs),
            batch_seeds=batched,
            retrain_teacher=True,
        )
        results[batched] = {
            cell: _rows(exp, cell, "test_errors") for cell in ("teacher_1200", "student_800_hard")
        }
        # chosen once, for both seeds
        assert len(set(_rows(exp, "student_800_hard", "selected_optim.lr").values())) == 1
        # 4 candidates in one run, seed 0 only
        assert len(list(runs.glob("smoke/seed*/student_800_hard_select_*"))) == 1
        placed = json.loads(next(runs.glob("smoke/seed1/teacher_1200-*/summary.json")).read_text())
        assert ("trained_as" in placed) == batched
        assert bool(list(runs.glob("smoke/seed0/teacher_1200_seeds-*"))) == batched
    for cell, by_seed in results[False].items():
        assert set(by_seed) == {"0", "1"}
        for seed, errors in by_seed.items():
            # float-tolerance equal models
            assert abs(results[True][cell][seed] - errors) <= 1, (cell, seed)


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ([], "full"),
        (["train_step=compile", "sync_every=50", "progress=false"], "full"),
        (["data.train_size=500"], "full-custom"),
        (["precision=bf16"], "full-custom"),
    ],
)
def test_rows_of_runs_with_other_settings_are_labelled_custom(overrides, label, tmp_path):
    assert (
        Context(
            EXP, CELLS, "full", seed=0, overrides=overrides, device="cpu", runs_root=tmp_path
        ).label
        == label
    )


def test_step_size_candidates_as_one_batched_run_choose_as_one_by_one(tmp_path):
    rows = {}
    for batched in (True, False):
        exp = _copy_experiment(tmp_path / str(batched))
        cfg = exp / "configs" / "student_800_hard.yaml"
        cfg.write_text(
            cfg.read_text().replace("select: {", f"select: {{batched: {str(batched).lower()}, ")
        )
        runs = tmp_path / str(batched) / "runs"
        reproduce(
            "hinton2015",
            only=["student_800_hard"],
            root=str(exp.parent),
            device="cpu",
            overrides=TINY,
            runs_root=str(runs),
        )
        with open(exp / "results.csv", newline="") as f:
            rows[batched] = {
                (r["metric"], r["variant"]): float(r["value"])
                for r in csv.DictReader(f)
                if r["cell"] == "student_800_hard" and r["metric"] != "samples_per_s"
            }
        assert len(list(runs.glob("smoke/seed0/student_800_hard_select_*"))) == (
            1 if batched else 4
        )
    assert rows[True][("selected_optim.lr", "")] == rows[False][("selected_optim.lr", "")]
    for key, value in rows[False].items():
        assert abs(rows[True][key] - value) <= 1, key  # the same candidates, trained together


def test_a_row_names_the_commit_and_date_of_the_run_that_measured_it(tmp_path, monkeypatch):
    ctx = Context(EXP, CELLS, "smoke", seed=0, overrides=[], device="cpu", runs_root=tmp_path)
    trained = {
        "device": "cpu",
        "wall_seconds": 1.0,
        "config_hash": "0123456789abcdef",
        "git_sha": "feedbeef",
        "finished_utc": "2026-01-02T03:04:05Z",
    }
    ctx.record("teacher_1200", "test_errors", 70, trained)
    older = {
        k: v for k, v in trained.items() if k not in ("git_sha", "finished_utc")
    }  # a summary from before
    ctx.record("teacher_1200", "test_errors", 71, older)
    assert [(r["git_sha"], r["date"]) for r in ctx.rows][0] == ("feedbeef", "2026-01-02T03:04:05Z")
    assert ctx.rows[1]["git_sha"] == ctx.sha  # unknown training commit: the recording command's


def test_outside_a_checkout_the_commit_comes_from_the_environment(tmp_path, monkeypatch):
    from darkknowledge.provenance import git_sha

    monkeypatch.setenv("DARKKNOWLEDGE_GIT_SHA", "abc123")
    assert git_sha(tmp_path) == "abc123"
    monkeypatch.delenv("DARKKNOWLEDGE_GIT_SHA")
    assert git_sha(tmp_path) == "unknown"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_results_written_beside_the_code_do_not_make_the_code_dirty(tmp_path):
    import subprocess

    from darkknowledge.provenance import git_sha

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    (tmp_path / "results.csv").write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "results.csv").write_text("a\nb\n")  # a command appended rows
    assert not git_sha(tmp_path / "src", only_here=True).endswith("-dirty")
    assert git_sha(tmp_path).endswith("-dirty")
    (tmp_path / "src" / "code.py").write_text("x = 2\n")  # the code itself changed
    assert git_sha(tmp_path / "src", only_here=True).endswith("-dirty")


@pytest.mark.parametrize("failure", ["collapsed", "diverged"])
def test_a_selected_value_whose_final_run_goes_bad_falls_back_to_the_next_candidate(
    failure, tmp_path, monkeypatch
):
    """The smoke scale's logit matching once chose optim.lr=0.01 on the validation split (105
    errors of 2000) and then trained, on the whole transfer set, to 1898 test errors. Here the
    final run at the chosen step size ends the same way (its model collapsed to one class, or its
    loss non-finite): the run is rejected, the next candidate trains instead, and rows say so."""
    import darkknowledge.reproduce.runner as runner
    from darkknowledge.errors import NonFiniteLossError
    from darkknowledge.models import load_model, save_model

    exp = _copy_experiment(tmp_path)
    cfg = exp / "configs" / "student_800_hard.yaml"
    cfg.write_text(cfg.read_text().replace("values: [0.01, 0.03, 0.1, 0.3]", "values: [0.3, 0.1]"))
    real_run = runner.run
    finals = []  # step sizes of the final runs, in order

    def run(cfg, kind, resume):  # the real training; the first final run then goes bad
        final = "_select_" not in Path(cfg.run_dir).name
        first = final and not finals
        if final:
            finals.append(cfg.optim.lr)
        if first and failure == "diverged":
            raise NonFiniteLossError("loss is nan at step 3")
        summary = real_run(cfg, kind=kind, resume=resume)
        if first:
            model = load_model(cfg.run_dir)
            with torch.no_grad():
                for p in model.parameters():
                    p.zero_()
                model.layers[-1].bias[7] = 1.0  # every image is a 7
            save_model(model, Path(cfg.run_dir) / "model.safetensors")
        return summary

    monkeypatch.setattr(runner, "run", run)
    tiny = [o for o in TINY if not o.startswith("optim.epochs")] + ["optim.epochs=3"]
    reproduce(
        "hinton2015",
        only=["student_800_hard"],
        root=str(exp.parent),
        device="cpu",
        overrides=tiny,
        runs_root=str(tmp_path / "runs"),
    )
    with open(exp / "results.csv", newline="") as f:
        rows = {
            (r["metric"], r["variant"]): float(r["value"])
            for r in csv.DictReader(f)
            if r["cell"] == "student_800_hard"
        }
    valid = {v: rows[("select_valid_errors", f"optim.lr={v}")] for v in (0.3, 0.1)}
    best, other = (0.3, 0.1) if valid[0.3] <= valid[0.1] else (0.1, 0.3)
    assert finals == [best, other]  # the chosen value's run, then the next best's
    assert ("select_rejected", f"optim.lr={best}") in rows
    assert rows[("selected_optim.lr", "")] == other
    assert rows[("final_errors_on_valid_images", "")] <= valid[other]
    assert rows[("test_errors", "")] < 700  # the collapsed model makes ~900 of 1000


def _ship_teacher(exp: Path, tmp_path: Path) -> Path:
    """Train a tiny teacher and ship it in the experiment copy as the smoke scale's teacher."""
    from darkknowledge.config import load_config
    from darkknowledge.train import run

    run_dir = tmp_path / "trained_teacher"
    cfg = load_config(None, [*TINY, "data.validation_size=0", f"run_dir={run_dir}"])
    summary = run(cfg, kind="train")
    shipped = exp / "shipped" / "teacher_1200_cpu"
    shipped.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy(run_dir / name, shipped / name)
    summary["model_sha256"] = hashlib.sha256(
        (shipped / "model.safetensors").read_bytes()
    ).hexdigest()
    (shipped / "summary.json").write_text(json.dumps(summary))
    teacher_cfg = exp / "configs" / "teacher_1200.yaml"
    # the repository's own
    assert "shipped: {path: shipped/teacher_1200_cpu, scales: [smoke]" in teacher_cfg.read_text()
    return shipped


def test_the_smoke_scale_distils_from_the_shipped_teacher(tmp_path):
    exp = _copy_experiment(tmp_path)
    shipped = _ship_teacher(exp, tmp_path)
    runs = tmp_path / "runs"
    args = dict(
        only=["student_800_soft_T20"],
        root=str(exp.parent),
        device="cpu",
        overrides=TINY,
        runs_root=str(runs),
    )
    reproduce("hinton2015", **args)
    assert not list(runs.glob("smoke/seed0/teacher_1200*"))  # no teacher trained
    student = next(
        p for p in runs.glob("smoke/seed0/student_800_soft_T20-*") if "select" not in p.name
    )
    assert str(shipped) in (student / "config.yaml").read_text()
    teacher_rows = _rows(exp, "teacher_1200", "test_errors")
    assert set(teacher_rows) == {"0"}
    # --retrain-teacher trains the smoke teacher instead
    reproduce("hinton2015", **args, retrain_teacher=True)
    assert list(runs.glob("smoke/seed0/teacher_1200-*"))
    # a shipped model that no longer matches its checksum is refused, with the fix
    with open(shipped / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(DKError, match="does not match its checksum"):
        reproduce("hinton2015", **args)


@pytest.mark.parametrize(
    ("spec", "values", "measured", "expected"),
    [
        ({"le": 80}, {"0": 75.0}, {}, "≤ 80: met"),
        (
            {"le": 80, "stretch": {"le": 67}},
            {"0": 75.0},
            {},
            "≤ 80: met; stretch ≤ 67: missed by 8",
        ),
        ({"le": 80, "stretch": {"le": 67}}, {"0": 60.0}, {}, "≤ 80: met; stretch ≤ 67: met too"),
        ({"le": 80}, {"0": 90.0}, {}, "≤ 80: missed by 10"),
        ({"ge": 0.7}, {"0": 0.5, "1": 0.7}, {}, "≥ 0.7: missed by 0.1"),
        (
            {"le": 10, "of": "t/test_errors"},
            {"0": 85.0},
            {("t", "", "test_errors"): {"0": 70.0}},
            "≤ 10 + `t` (= 80): missed by 5",
        ),
        (
            {"within": 15, "of": "s/test_errors"},
            {"0": 85.0},
            {("s", "", "test_errors"): {"0": 75.0}},
            "within 15 of `s`: met",
        ),
        ({"within": 15, "of": "s/test_errors"}, {"0": 85.0}, {}, "within 15 of `s`: not measured"),
        ({"le": 80}, {}, {}, "≤ 80: not measured"),
    ],
)
def test_targets_read_relative_and_stretch_bars(spec, values, measured, expected):
    from darkknowledge.reproduce.report import _target

    assert _target(spec, values, measured) == expected


def test_the_soft_arm_of_the_regularizer_chooses_its_step_size_on_validation(tmp_path):
    exp = _copy_experiment(tmp_path)
    reproduce(
        "hinton2015",
        only=["soft_regularizer_3pct"],
        root=str(exp.parent),
        device="cpu",
        overrides=TINY,
        runs_root=str(tmp_path / "runs"),
        retrain_teacher=True,
    )
    with open(exp / "results.csv", newline="") as f:
        rows = {
            (r["metric"], r["variant"]): float(r["value"])
            for r in csv.DictReader(f)
            if r["cell"] == "soft_regularizer_3pct"
        }
    valid = {
        v: rows[("soft_select_valid_errors", f"optim.lr={v}")] for v in (0.003, 0.01, 0.03, 0.1)
    }
    chosen = rows[("soft_selected_optim.lr", "")]
    assert valid[chosen] == min(valid.values())
    # one batched run
    assert (
        len(list((tmp_path / "runs").glob("smoke/seed0/soft_regularizer_3pct_soft_select-*"))) == 1
    )
    assert (
        ("soft_test_errors", "") in rows
        and ("gap_closed", "") in rows
        or rows[("hard_test_errors", "")] == rows[("full_data_hard_test_errors", "")]
    )


def test_a_scales_training_time_counts_its_current_runs_once_and_not_a_borrowed_teacher():
    from darkknowledge.reproduce.report import training_time

    def row(scale, cell, metric, value, wall, h, date):
        return {
            "cell": cell,
            "variant": "",
            "scale": scale,
            "seed": "0",
            "metric": metric,
            "value": str(value),
            "wall_seconds": str(wall),
            "config_hash": h,
            "date": date,
        }

    rows = [
        row("cpu", "teacher_1200", "test_errors", 65, 3000, "T", "2026-12-01T12:00Z"),
        # replaced below
        row("smoke", "student", "test_errors", 400, 600, "old", "2026-11-01T00:00Z"),
        # the shipped teacher
        row("smoke", "teacher_1200", "test_errors", 65, 3000, "T", "2026-12-01T13:00Z"),
        row("smoke", "student", "test_errors", 180, 60, "new", "2026-12-01T13:01Z"),
        row("smoke", "student", "samples_per_s", 9000, 60, "new", "2026-12-01T13:01Z"),
    ]
    assert training_time(rows, "smoke") == (
        "seed 0's 1 runs took 1 minutes in all (the sum of their wall times); `teacher_1200` "
        "is another scale's run (the shipped teacher), not counted"
    )
    assert training_time(rows, "cpu").startswith("seed 0's 1 runs took 50 minutes")
    # rows that carry the trained run's own date tie, whatever their order: the scale that
    # recorded its speed trained it
    tied = [
        row("smoke", "teacher_1200", "test_errors", 65, 3000, "T", "2026-12-01T12:00Z"),
        row("cpu", "teacher_1200", "test_errors", 65, 3000, "T", "2026-12-01T12:00Z"),
        row("cpu", "teacher_1200", "samples_per_s", 5500, 3000, "T", "2026-12-01T12:00Z"),
    ]
    assert training_time(tied, "cpu").startswith("seed 0's 1 runs took 50 minutes")
    assert "`teacher_1200` is another scale's run" in training_time(tied, "smoke")


def test_the_deployment_table_shows_the_latest_measurement_of_each_model(tmp_path):
    from darkknowledge.reproduce.report import deployment_table

    cols = (
        "cell,scale,runtime,parameters,bytes,test_errors,ece,"
        "b1_p50_ms,b1_p95_ms,b64_p50_ms,b64_p95_ms,threads,machine,git_sha,date"
    )
    rows = [
        # replaced below
        "student_800_hard,cpu,pytorch,1276810,5110000,140,0.01,0.9,1.0,9.0,9.5,1,x86_64,abc,2026-12-01T00:00:00Z",
        "student_800_hard,cpu,pytorch,1276810,5110000,129,0.0111,0.5,0.6,5.0,5.5,1,x86_64,abcdef1234,2026-12-02T00:00:00Z",
        "student_800_hard,cpu,onnx,1276810,5108000,129,0.0111,0.4,0.5,4.0,4.5,1,x86_64,abcdef1234,2026-12-02T00:00:00Z",
        "student_800_hard,cpu,onnx-int8,1276810,1290000,131,,0.2,0.3,1.0,1.5,1,x86_64,abcdef1234,2026-12-02T00:00:00Z",
    ]
    (tmp_path / "deployment.csv").write_text("\n".join([cols, *rows]) + "\n")
    text = deployment_table(tmp_path / "deployment.csv")
    assert (
        "| `student_800_hard` | 1,276,810 | 5.11 MB / 5.11 MB / 1.29 MB | 129 / 131 | 0.0111 | "
        "0.500 / 0.400 / 0.200 | 5.000 / 4.000 / 1.000 |" in text
    )
    assert "2026-12-02 (commit abcdef1234)" in text
    assert deployment_table(tmp_path / "absent.csv") == ""


def _run_edited_cell(tmp_path, cell_id, edit, overrides=TINY):
    """Copy the experiment, let ``edit`` change cell ``cell_id``'s config (a dict) in place, and
    reproduce that cell alone at smoke scale; the copied experiment's directory."""
    exp = _copy_experiment(tmp_path)
    cfg = exp / "configs" / f"{cell_id}.yaml"
    cell = yaml.safe_load(cfg.read_text())
    edit(cell)
    cfg.write_text(yaml.safe_dump(cell))
    assert (
        reproduce(
            "hinton2015",
            only=[cell_id],
            scale="smoke",
            root=str(tmp_path / "experiments"),
            device="cpu",
            overrides=overrides,
            runs_root=str(tmp_path / "runs"),
        )
        == 0
    )
    return exp


def test_the_ensemble_cell_records_baseline_ensemble_student_and_members_curve(tmp_path):
    exp = _run_edited_cell(
        tmp_path,
        "ensemble_distill",
        lambda cell: cell["ensemble"].update(
            members=3,
            counts=[1, 3],
            datasets={"smoke": ["mnist"]},
            temperatures=[1, 4],
            step_sizes=[0.03, 0.1],
        ),
    )
    with open(exp / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = {
        (r["variant"], r["metric"]): float(r["value"])
        for r in rows
        if r["cell"] == "ensemble_distill"
    }
    # 2 temperatures × 2 step sizes, one batched run
    assert len([k for k in got if k[1] == "select_valid_errors"]) == 4
    base, ens, dist = (
        got[("", "baseline_accuracy_mnist")],
        got[("", "ensemble_accuracy_mnist")],
        got[("", "distilled_accuracy_mnist")],
    )
    assert got[("", "member_accuracy_min_mnist")] <= base <= got[("", "member_accuracy_max_mnist")]
    assert got[("", "gain_mnist")] == pytest.approx(ens - base, abs=1e-3)
    if ens > base:
        assert got[("", "gain_kept_mnist")] == pytest.approx(
            (dist - base) / (ens - base), rel=1e-3, abs=1e-3
        )
    assert (
        got[("mnist_m3", "ensemble_accuracy")] == ens
        and got[("mnist_m3", "distilled_accuracy")] == dist
    )
    assert ("mnist_m1", "distilled_accuracy") in got  # a student of member 0 alone
    # the run directory of the ensemble is one teacher of 3 members, each the run of its seed
    ens_dir = next(
        (tmp_path / "runs" / "smoke" / "seed0").glob("ensemble_distill_mnist_ensemble-*")
    )
    assert sorted(p.name for p in (ens_dir / "replicas").iterdir()) == ["0", "1", "2"]
    from darkknowledge.reproduce.report import ensemble_results, plot_members

    table, curves = ensemble_results(rows, "smoke-custom")
    assert "| mnist |" in table and set(curves["mnist"]["ensemble"]) == {1, 3}
    assert (
        plot_members(curves, tmp_path / "members.png", "smoke")
        and (tmp_path / "members.png").stat().st_size > 0
    )


def test_the_specialists_cell_records_tables_3_and_4_and_the_distilled_network(tmp_path):
    tiny = [o for o in TINY if not o.startswith("data.")] + [
        "data.train_size=2000",
        "data.validation_size=200",
        "data.test_size=500",
    ]
    exp = _run_edited_cell(
        tmp_path,
        "specialists_mnist100",
        lambda cell: cell["specialists"].update(
            clusters={"k": 4, "size": 10, "seed": 0},
            train={"steps": 20, "batch_size": 50, "lr": 0.01},
            student={"epochs": 1, "lr": 0.05},
        ),
        tiny,
    )
    with open(exp / "results.csv", newline="") as f:
        got = {
            (r["variant"], r["metric"]): float(r["value"])
            for r in csv.DictReader(f)
            if r["cell"] == "specialists_mnist100"
        }
    for metric in (
        "top1",
        "top1_with_specialists",
        "conditional",
        "top1_distilled",
        "parameters_system",
        "latency_ms_system",
    ):
        assert ("", metric) in got, metric
    assert got[("", "parameters_system")] > got[("", "parameters_generalist")]
    assert 1 <= got[("", "specialists")] <= 4
    counts = [v for (variant, m), v in got.items() if m == "covering_n"]
    assert sum(counts) == 500  # every test image falls in one covering group
    # what a later command reuses, and no checkpoint left behind once the results are saved
    stage = next((tmp_path / "runs").glob("smoke/seed0/specialists_mnist100_specialists-*"))
    assert {p.suffix for p in stage.glob("student-*")} == {".safetensors", ".json"}
    assert (stage / "clusters.json").is_file() and not list(stage.glob("*checkpoints"))


def test_the_mnist100_cell_distils_the_system_into_one_network_at_every_scale():
    student = CELLS["specialists_mnist100"].specialists["student"]
    generalist = {"smoke": 5, "cpu": 30, "full": 60}  # its epochs at each scale
    assert student["epochs"] == generalist


def test_a_misspelt_clusters_key_is_refused_before_anything_trains(tmp_path):
    with pytest.raises(DKError, match=r"unknown key\(s\) metirc; use k, size, seed"):
        _run_edited_cell(
            tmp_path,
            "specialists_mnist100",
            lambda cell: cell["specialists"]["clusters"].update(metirc="cosine"),
        )
    assert not (tmp_path / "runs").exists()


def test_an_override_after_only_is_an_override_not_a_cell(monkeypatch):
    import darkknowledge.reproduce as package
    from darkknowledge.cli import main

    seen = {}
    monkeypatch.setattr(package, "reproduce", lambda experiment, **kw: seen.update(kw) or 0)
    assert main(["reproduce", "hinton2015", "--only", "omit3", "threads=2"]) == 0
    assert seen["only"] == ["omit3"] and seen["overrides"] == ["threads=2"]
