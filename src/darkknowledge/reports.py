"""``dk report``: what a run (or an experiment) did, in Markdown and in one self-contained HTML
file.

For a run directory: the training curves (loss per logged step, errors per evaluation), the test
set's reliability diagram (the student's and, for a distilled run, its teacher's: calibration
side by side), the errors per class and the confusion matrix. For an experiment folder: its
generated tables (``dk reproduce``'s README section), the temperature sweep, and the bias-offset
sweep of the omitted-3 model (test errors, total and on 3s, as the class-3 logit is raised).
Plots are made headless with matplotlib (the ``plot`` extra); the HTML embeds them, so the one
file can be mailed or attached.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import torch

from darkknowledge.errors import DKError
from darkknowledge.train.metrics import read_metrics


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DKError(
            "dk report draws with matplotlib, which is not installed",
            'install the plot extra: pip install -e ".[plot]"',
        ) from None
    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def curves(records: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Training loss per logged step and errors per evaluation, one figure."""
    steps = [
        r for r in records if "loss" in r and "split" not in r and not isinstance(r["loss"], list)
    ]
    evals = [r for r in records if "split" in r and isinstance(r.get("errors"), (int, float))]
    if not steps and not evals:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        a.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, color="#1f77b4")
        a.set_yscale("log")
    a.set(xlabel="step", ylabel="training loss (log scale)", title=f"{title}: training loss")
    for split, color in (("valid", "#ff7f0e"), ("test", "#2ca02c")):
        pts = [r for r in evals if r["split"] == split]
        if pts:
            b.plot(
                [r["epoch"] for r in pts],
                [r["errors"] for r in pts],
                "o-",
                ms=3,
                color=color,
                label=f"{split} ({pts[-1]['errors']} at the end)",
            )
    b.set(xlabel="epoch", ylabel="errors", title="errors at each evaluation")
    if evals:
        b.legend()
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    return _save(fig, path)


def reliability(
    curves_by_name: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path, bins: int = 15
) -> Path:
    """Accuracy against confidence in equal-width bins, one line per model (the diagonal is
    perfect calibration); the legend gives each model's ECE."""
    from darkknowledge.train.evaluate import expected_calibration_error

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    edges = torch.linspace(0, 1, bins + 1)
    for name, (probs, labels) in curves_by_name.items():
        conf, pred = probs.max(dim=1)
        correct = (pred == labels).float()
        xs, ys = [], []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            m = (conf > lo) & (conf <= hi)
            if int(m.sum()) >= 5:
                xs.append(float(conf[m].mean()))
                ys.append(float(correct[m].mean()))
        ax.plot(
            xs,
            ys,
            "o-",
            ms=4,
            label=f"{name} (ECE {expected_calibration_error(probs, labels):.4f})",
        )
    ax.set(
        xlabel="confidence (max probability)",
        ylabel="accuracy",
        title="reliability on the test set",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion(
    pred: torch.Tensor, labels: torch.Tensor, classes: int, path: Path
) -> tuple[Path, list[int]]:
    """The confusion matrix (errors only: the diagonal left blank) and the errors of each class."""
    plt = _plt()
    m = torch.zeros(classes, classes, dtype=torch.long)
    m.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = [int(m[c].sum() - m[c, c]) for c in range(classes)]
    off = m.clone().float()
    off.fill_diagonal_(float("nan"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.15, 1]})
    im = a.imshow(off.numpy(), cmap="Reds")
    for i in range(classes):
        for j in range(classes):
            if i != j and m[i, j] > 0:
                a.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7)
    a.set(
        xlabel="predicted class",
        ylabel="true class",
        title="confusions (test set; diagonal left out)",
        xticks=range(classes),
        yticks=range(classes),
    )
    fig.colorbar(im, ax=a, fraction=0.046)
    b.bar(range(classes), per_class, color="#d62728")
    for c, n in enumerate(per_class):
        b.text(c, n, str(n), ha="center", va="bottom", fontsize=8)
    b.set(
        xlabel="true class",
        ylabel="errors",
        title=f"errors per class ({sum(per_class)} in all)",
        xticks=range(classes),
    )
    return _save(fig, path), per_class


def run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """The report of one run directory; returns the Markdown file (the HTML sits next to it)."""
    from darkknowledge.config import read_yaml
    from darkknowledge.data import datasets
    from darkknowledge.models import load_model
    from darkknowledge.teachers import Teacher, compute_teacher_logits
    from darkknowledge.train.evaluate import predict_logits

    run = Path(run_dir)
    if not (run / "metrics.jsonl").is_file() or not (run / "model.safetensors").is_file():
        raise DKError(
            f"{run} is not a finished run directory (no metrics.jsonl or model.safetensors)",
            "give a run directory that dk train / dk distill finished",
        )
    out = Path(out_dir) if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    name = (cfg.get("data") or {}).get("dataset", "mnist")
    test = datasets.get(name)("test")
    model = load_model(run)
    logits = predict_logits(model, test)
    probs = logits.softmax(dim=1)
    calib = {"this model": (probs, test.labels)}
    teachers = (cfg.get("teacher") or {}).get("checkpoints") or []
    if (
        (cfg.get("method") or {}).get("name") not in (None, "hard_targets")
        and teachers
        and all(Path(t).exists() for t in teachers)
    ):
        t_logits = compute_teacher_logits(
            Teacher.from_checkpoints(teachers, torch.device("cpu")), test
        )
        calib["its teacher"] = (
            t_logits.softmax(dim=-1).mean(dim=0)
            if t_logits.dim() == 3
            else t_logits.softmax(dim=-1),
            test.labels,
        )
    missing = [t for t in teachers if not Path(t).exists()]
    records = read_metrics(run / "metrics.jsonl")
    summary = (
        json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    )
    pics = []
    c = curves(records, out / "curves.png", run.name)
    if c:
        pics.append(("Training curves", c))
    pics.append(("Calibration", reliability(calib, out / "reliability.png")))
    conf_png, per_class = confusion(
        logits.argmax(1), test.labels, test.num_classes, out / "confusion.png"
    )
    pics.append(("Errors per class and confusions", conf_png))
    errors = sum(per_class)
    facts = [
        f"- run: `{run}`; method `{(cfg.get('method') or {}).get('name', '?')}`, model "
        f"`{json.dumps(cfg.get('model') or {})}`",
        f"- test set: {name}, {len(test):,} images; **{errors} errors** "
        f"({100 * errors / len(test):.2f} %)",
        f"- trained {summary.get('epochs', '?')} epochs, {summary.get('steps', '?')} steps in "
        f"{summary.get('train_seconds', 0):.0f} s on {summary.get('device', '?')} (commit "
        f"{str(summary.get('git_sha', '?'))[:10]})",
        *(
            [
                f"- its teacher ({', '.join(missing)}) is not there to compare calibration with "
                "(paths are relative to where it was trained)"
            ]
            if missing
            else []
        ),
        f"- most errors: class {max(range(len(per_class)), key=per_class.__getitem__)} "
        f"({max(per_class)}); fewest: class "
        f"{min(range(len(per_class)), key=per_class.__getitem__)} ({min(per_class)})",
    ]
    return _write(out, f"Report: {run.name}", facts, pics, [])


def experiment_report(
    exp_dir: str | Path,
    runs_root: str | Path = "runs",
    scale: str = "cpu",
    out_dir: str | Path | None = None,
) -> Path:
    """The report of an experiment folder: its generated tables, its sweep plot, and the
    omitted-3 bias sweep (when that run is there to load)."""
    exp = Path(exp_dir)
    readme = exp / "README.md"
    if not readme.is_file() or "results:start" not in readme.read_text():
        raise DKError(
            f"{exp} holds no generated results (README.md without a results section)",
            "run dk reproduce first, or give a run directory",
        )
    out = Path(out_dir) if out_dir is not None else exp / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = readme.read_text()
    generated = (
        text.split("-->", 1)[1].split("<!-- results:end -->", 1)[0]
        if "results:start" in text
        else ""
    )
    generated = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", generated)  # pictures come below, embedded
    pics = [
        (f"Temperature sweep ({p.stem.rsplit('_', 1)[-1]} scale)", p)
        for p in sorted(exp.glob("temperature_sweep_*.png"))
    ]
    bias = _omit3_bias_sweep(exp, Path(runs_root), scale, out / "omit3_bias_sweep.png")
    if bias:
        pics.append((f"Omitted 3s: the bias offset ({scale} scale)", bias))
    return _write(out, f"Report: {exp.name}", [generated.strip()], pics, [])


def _omit3_bias_sweep(exp: Path, runs_root: Path, scale: str, path: Path) -> Path | None:
    """Test errors (all, and on 3s) of the omit3 model as the class-3 logit is raised."""
    from darkknowledge.data import datasets
    from darkknowledge.models import load_model
    from darkknowledge.reproduce.results import read_results
    from darkknowledge.train.evaluate import predict_logits

    rows = [
        r
        for r in read_results(exp / "results.csv")
        if r["cell"] == "omit3"
        and r["scale"] == scale
        and r["seed"] == "0"
        and r["metric"] == "test_errors"
    ]
    found = (
        sorted(runs_root.glob(f"{exp.name}/{scale}/seed0/omit3-{rows[-1]['config_hash']}*"))
        if rows
        else []
    )
    if not found or not (found[0] / "model.safetensors").is_file():
        return None
    test = datasets.get("mnist")("test")
    logits = predict_logits(load_model(found[0]), test)
    offsets = torch.arange(0, 8.01, 0.1)
    is3 = test.labels == 3
    total, on3 = [], []
    for o in offsets:
        z = logits.clone()
        z[:, 3] += o
        wrong = z.argmax(1) != test.labels
        total.append(int(wrong.sum()))
        on3.append(int(wrong[is3].sum()))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(offsets.numpy(), total, label="all test errors (of 10,000)")
    ax.plot(offsets.numpy(), on3, label=f"errors on test 3s (of {int(is3.sum())})")
    ax.axvline(3.5, ls=":", color="grey", label="the paper's offset, +3.5")
    ax.set(
        xlabel="offset added to the class-3 logit",
        ylabel="test errors",
        title="a student that never saw a 3",
        yscale="log",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _write(
    out: Path, title: str, facts: list[str], pics: list[tuple[str, Path]], extra: list[str]
) -> Path:
    md = [f"# {title}", "", *facts, ""]
    for caption, p in pics:
        md += [f"## {caption}", "", f"![{caption}]({p.name})", ""]
    (out / "report.md").write_text("\n".join(md + extra))
    body = [f"<h1>{html.escape(title)}</h1>", _md_to_html("\n".join(facts))]
    for caption, p in pics:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(
            f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
            f"src='data:image/png;base64,{data}'>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em "
        "auto;color:#222}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid "
        "#ccc;padding:3px 6px}img{max-width:100%}"
    )
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta "
        f"charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    return out / "report.md"


def _md_to_html(text: str) -> str:
    """Just enough Markdown for these reports: headings, tables, bullets, bold and code."""
    out, table = [], []

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", s)

    def flush() -> None:
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|[-| ]+\|", r)]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:]
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("### "):
            out.append(f"<h3>{inline(line[4:])}</h3>")
        elif line.startswith("- "):
            out.append(f"<p>• {inline(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)
