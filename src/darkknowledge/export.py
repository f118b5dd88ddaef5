"""``dk export``: a trained model as an ONNX file a runtime can serve, checked and timed.

The model is exported at temperature 1 (temperature lives only in the distillation loss): the
ONNX graph maps ``x`` (batch, in_features) float32, the model's own inputs (for the image data
sets: pixels / 255, flattened), to ``logits`` (batch, classes). A registered MLP or CNN is
written directly as its ONNX graph (``Gemm`` and ``Relu`` nodes, and for a CNN ``Reshape``,
``Conv``, ``MaxPool`` and ``Flatten``; dropout is the identity at inference), so no exporter
tracing is involved. The file is then checked: onnxruntime's logits on the test
set against PyTorch's (max absolute difference within ``TOLERANCE``, and the same test errors),
and timed: CPU latency p50/p95 at batch 1 and 64, for onnxruntime and for PyTorch. With
``quantize="dynamic-int8"`` an int8 copy (onnxruntime's dynamic quantization of the weights) is
written too, with its size, latency and the change of test errors it costs.

Needs the ``export`` extra (``pip install -e ".[export]"``: onnx, onnxruntime).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darkknowledge.data import atomic_write_bytes, datasets
from darkknowledge.errors import DKError
from darkknowledge.models import load_model
from darkknowledge.models.cnn import CNN
from darkknowledge.models.mlp import MLP
from darkknowledge.train.evaluate import predict_logits

TOLERANCE = 1e-4  # max |onnxruntime − PyTorch| logit, float32
QUANTIZE = ("dynamic-int8",)


def _onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DKError(
            "dk export needs onnx and onnxruntime",
            'install the export extra: pip install -e ".[export]"',
        ) from None
    return onnx, onnxruntime


def onnx_graph(model: MLP | CNN, opset: int = 17) -> bytes:
    """The ONNX model of a registered MLP or CNN in eval mode: for a CNN, the flat input reshaped
    to its image, then Conv, Relu and 2×2 MaxPool per convolution and a Flatten; then Gemm
    (+ Relu) per fully connected layer."""
    onnx, _ = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, x = [], [], "x"
    if isinstance(model, CNN):
        inits.append(numpy_helper.from_array(np.array([-1, *model.image], dtype=np.int64), "image"))
        nodes.append(helper.make_node("Reshape", ["x", "image"], ["c"]))
        x = "c"
        for i, conv in enumerate(model.convs):
            w, b = f"convs.{i}.weight", f"convs.{i}.bias"
            inits += [
                numpy_helper.from_array(conv.weight.detach().cpu().float().numpy(), w),
                numpy_helper.from_array(conv.bias.detach().cpu().float().numpy(), b),
            ]
            nodes += [
                helper.make_node("Conv", [x, w, b], [f"conv{i}"]),
                helper.make_node("Relu", [f"conv{i}"], [f"act{i}"]),
                helper.make_node(
                    "MaxPool", [f"act{i}"], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]
                ),
            ]
            x = f"pool{i}"
        nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
        x = "flat"
    for i, layer in enumerate(model.layers):
        w, b = f"layers.{i}.weight", f"layers.{i}.bias"
        inits += [
            numpy_helper.from_array(layer.weight.detach().cpu().float().numpy(), w),
            numpy_helper.from_array(layer.bias.detach().cpu().float().numpy(), b),
        ]
        last = i == len(model.layers) - 1
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, w, b], [out if last else f"z{i}"], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        x = out
    graph = helper.make_graph(
        nodes,
        f"darkknowledge_{type(model).__name__.lower()}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", model.in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", model.num_classes])],
        inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="darkknowledge"
    )
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _latency(run: Callable[[], Any], repeats: int) -> dict[str, float]:
    for _ in range(max(3, repeats // 10)):  # warm-up
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))],
    }


def _session(path: Path, threads: int) -> Any:
    _, ort = _onnx()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    quantize: str | None = None,
    dataset: str | None = None,
    threads: int = 1,
    repeats: int = 200,
) -> dict[str, Any]:
    """Export the model of ``run_dir`` (a run directory or a model file) to ONNX, check it against
    PyTorch on the test set, time it, and write ``export.json`` next to the ``.onnx`` file(s)."""
    if quantize is not None and quantize not in QUANTIZE:
        raise DKError(f"--quantize {quantize} is unknown", f"choose {', '.join(QUANTIZE)}")
    src = Path(run_dir)
    model = load_model(src)
    model.eval()
    if not isinstance(model, (MLP, CNN)):
        raise DKError(
            f"{src}: dk export writes registered MLPs and CNNs; this model is a "
            f"{type(model).__name__}",
            "export other modules with torch.onnx.export",
        )
    out = Path(out_dir) if out_dir is not None else (src if src.is_dir() else src.parent) / "export"
    name = dataset or _dataset_of(src)
    test = datasets.get(name)("test")
    if test.num_classes != model.num_classes or test.images[0].numel() != model.in_features:
        raise DKError(
            f"the model predicts {model.num_classes} classes from {model.in_features} inputs; "
            f"{name} has {test.num_classes} classes, {test.images[0].numel()} inputs",
            "pass --dataset, the dataset the model was trained on",
        )
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.onnx"
    atomic_write_bytes(fp32, onnx_graph(model))
    x = test.features()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reference = predict_logits(model, test)
        report: dict[str, Any] = {
            "source": str(src),
            "dataset": f"{name}/test",
            "n": len(test),
            "tolerance": TOLERANCE,
            "threads": threads,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        report["pytorch"] = {
            "test_errors": int((reference.argmax(1) != test.labels).sum()),
            **_timings(lambda b: model(b), x, repeats),
        }
        report["onnx"] = _check(fp32, x, test.labels, reference, threads, repeats, exact=True)
        if quantize:
            int8 = out / "model.int8.onnx"
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quiet = logging.getLogger().level
            # its advice to pre-process is for conv nets
            logging.getLogger().setLevel(logging.ERROR)
            try:
                quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
            finally:
                logging.getLogger().setLevel(quiet)
            report["int8"] = _check(int8, x, test.labels, reference, threads, repeats, exact=False)
            report["int8"]["test_errors_change"] = (
                report["int8"]["test_errors"] - report["onnx"]["test_errors"]
            )
    finally:
        torch.set_num_threads(torch_threads)
    atomic_write_bytes(out / "export.json", json.dumps(report, indent=2).encode())
    return report


def _timings(run: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int) -> dict[str, Any]:
    with torch.inference_mode():
        return {f"batch_{b}": _latency(lambda b=b: run(x[:b]), repeats) for b in (1, 64)}


def _check(
    path: Path,
    x: torch.Tensor,
    labels: torch.Tensor,
    reference: torch.Tensor,
    threads: int,
    repeats: int,
    exact: bool,
) -> dict[str, Any]:
    session = _session(path, threads)
    xs = x.numpy()
    logits = torch.from_numpy(session.run(["logits"], {"x": xs})[0])
    diff = float((logits - reference).abs().max())
    if exact and diff > TOLERANCE:
        raise DKError(
            f"{path}: onnxruntime's logits differ from PyTorch's by up to {diff:.2e} (more than "
            f"{TOLERANCE:g})",
            "report this model; the file is not fit to serve",
        )
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "max_abs_diff": diff,
        "test_errors": int((logits.argmax(1) != labels).sum()),
        **{
            f"batch_{b}": _latency(lambda b=b: session.run(["logits"], {"x": xs[:b]}), repeats)
            for b in (1, 64)
        },
    }


def _dataset_of(src: Path) -> str:
    """The dataset a run directory's config names (mnist when there is none to read)."""
    from darkknowledge.config import read_yaml

    cfg = (src if src.is_dir() else src.parent) / "config.yaml"
    if not cfg.is_file():
        return "mnist"
    return str((read_yaml(cfg).get("data") or {}).get("dataset", "mnist"))


def describe(report: dict[str, Any]) -> str:
    """The export report as a small table."""
    rows = [
        ("PyTorch (eager)", report["pytorch"], None),
        ("ONNX fp32", report["onnx"], report["onnx"]["bytes"]),
    ]
    if "int8" in report:
        rows.append(("ONNX int8 (dynamic)", report["int8"], report["int8"]["bytes"]))
    lines = [
        f"{report['source']}: {report['parameters']:,} parameters; {report['dataset']} "
        f"({report['n']:,} images), {report['threads']} CPU thread(s)",
        f"onnxruntime vs PyTorch: max |Δlogit| {report['onnx']['max_abs_diff']:.1e} (tolerance "
        f"{report['tolerance']:g})",
        "| runtime | size | test errors | batch 1 p50 / p95 (ms) | batch 64 p50 / p95 (ms) |",
        "|---|---|---|---|---|",
    ]
    for label, r, size in rows:
        s = "—" if size is None else f"{size / 1e6:.2f} MB"
        b1, b64 = r["batch_1"], r["batch_64"]
        lines.append(
            f"| {label} | {s} | {r['test_errors']} | {b1['p50_ms']:.3f} / {b1['p95_ms']:.3f} | "
            f"{b64['p50_ms']:.3f} / {b64['p95_ms']:.3f} |"
        )
    return "\n".join(lines)
