"""The int8 share of every target for models edgeship has never seen (issue 11's figures table).

    .venv/bin/python scripts/int8_share/table.py [--models cnn,lstm] [--work /tmp/share] [--no-qat]

Each model of models.py goes through `edgeship.run` with default settings (static int8, QAT on
with its probe, calibration 4 batches of 64) to the four int8 targets and their fp32 twins,
benchmarked briefly on this machine. Prints one markdown row per model and target: int8 share of
multiply-accumulates (read from the artifact), accuracy drop in points, size and p50 against the
fp32 twin, status; then the CPU's int8 ISA flags, without which no latency figure means much.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import edgeship
from edgeship.environment import environment
from edgeship.recipe import parse_recipe
from edgeship.report.writers import latency_ratio, size_ratio

HERE = Path(__file__).resolve().parent
INT8 = ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]
MODELS = {  # name: (model factory, data factory, example input shapes, targets)
    "cnn": ("cnn", "image_splits", [[1, 1, 8, 8]], INT8),
    "wide cnn": ("wide_cnn", "image_splits", [[1, 1, 8, 8]], INT8),
    # ExecuTorch runs no 5-D convolution: edgeship refuses the target before any work (exit 2)
    "video (2+1)D": ("video", "clip_splits", [[1, 1, 4, 8, 8]], INT8[:3]),
    "transformer": ("transformer", "row_splits", [[1, 8, 8]], INT8),
    "wide transformer": ("wide_transformer", "row_splits", [[1, 8, 8]], INT8),
    "lstm": ("lstm", "row_splits", [[1, 8, 8]], INT8),
    "two inputs": ("two_inputs", "pair_splits", [[1, 1, 8, 8], [1, 1, 8, 8]], INT8),
}

# Float training's Adam rate: 0.01, except where the model does not learn at it (the wide
# transformer stayed at chance, top-1 0.10)
TRAIN_LR = {"wide transformer": 0.001}


def recipe(name: str, qat: bool) -> dict:
    model, data, shapes, targets = MODELS[name]
    return {
        "name": name, "seed": 0, "targets": targets, "devices": ["local"],
        "model": {"factory": f"{HERE / 'models.py'}:{model}", "train": {"epochs": 10, "lr": TRAIN_LR.get(name, 0.01)},
                  "example_inputs": [{"shape": s, "dtype": "float32"} for s in shapes]},
        "data": {"factory": f"{HERE / 'models.py'}:{data}", "batch_size": 64, "metric": "top1"},
        "quantization": {"calibration_batches": 4, "qat": {"enabled": qat, "epochs": 2}},
        "benchmark": {"warmup_iterations": 5, "min_iterations": 50, "min_seconds": 0.3},
    }


def rows(name: str, report) -> list[str]:
    out = []
    for a in report.artifacts:
        if a.precision != "int8":
            continue
        share = a.int8_share.macs_fraction if a.int8_share and a.int8_share.macs_fraction is not None else None
        drop = report.metric.worsening(report.float.accuracy, a.accuracy) if a.accuracy is not None else None
        size = size_ratio(report, a)
        speed = latency_ratio(report, a, a.benchmarks[0]) if a.benchmarks else None
        cells = [name, a.target, "—" if share is None else f"{share:.1%}",
                 "—" if drop is None else f"{drop:+.2f}", "—" if size is None else f"{size:.2f}x",
                 "—" if speed is None else f"{speed:.2f}x", a.status if a.status == "ok" else a.error[:90]]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeship-int8-share"))
    parser.add_argument("--no-qat", action="store_true")
    args = parser.parse_args()
    lines = ["| model | target | int8 MACs | drop pts | size vs fp32 | p50 vs fp32 | status |",
             "|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        started = time.monotonic()
        folder = args.work / name.replace(" ", "-").replace("(", "").replace(")", "")
        folder.mkdir(parents=True, exist_ok=True)
        report = edgeship.run(parse_recipe(recipe(name, not args.no_qat), name, folder), folder / "run",
                              force=True, quiet=True)
        lines += rows(name, report)
        print(f"{name}: float {report.float.accuracy:.4f}, {time.monotonic() - started:.0f} s", file=sys.stderr)
    host = environment()["host"]
    print("\n".join(lines))
    print(f"\n{host['cpu']}; int8 ISA flags: {', '.join(host['int8_isa']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
