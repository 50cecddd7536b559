"""Where the time goes in a MobileNetV2-style net (edgeship's example at width 1.0, 3x112x112 in (its stem has
stride 1, so as much work as the usual 224x224), 1000 classes, random weights: timing only),
int8 by ONNX Runtime's own quantize_static (QDQ, U8 activations, S8 per-channel weights), with
and without its first three convolutions left float: `edgeship bench --profile` on each, and the
per-op sum against the unprofiled p50.

    .venv/bin/python scripts/profile_mobilenet.py [--out /tmp/profile-mobilenet]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgeship.examples.mobilenet import MobileNetV2


class Reader(CalibrationDataReader):
    def __init__(self, name: str) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{name: rng.standard_normal((1, 3, 112, 112), np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/profile-mobilenet"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = MobileNetV2(width=1.0, classes=1000, in_channels=3).eval()  # stem stride 1: 112 in ≈ the usual 224
    fp32 = out / "mobilenet-fp32.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 112, 112),), fp32, dynamo=True, external_data=False)
    model = onnx.load(str(fp32))
    name = model.graph.input[0].name
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    variants = {"all-int8": [], "first-3-float": convs[:3]}
    for variant, excluded in variants.items():
        path = out / f"mobilenet-{variant}.onnx"
        quantize_static(str(fp32), str(path), Reader(name), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, nodes_to_exclude=excluded)
        folder = out / variant
        subprocess.run([sys.executable, "-m", "edgeship", "bench", str(path), "--profile", "--out", str(folder)],
                       check=True)
        report = json.loads((folder / "report.json").read_text())
        bench = report["runs"][0]["benchmark"]
        ops = bench["profile"]["ops"]
        kinds = {}
        for op in ops:
            if op["op"] in ("Conv", "QLinearConv", "FusedConv"):
                kinds.setdefault(op["op"], []).append(op["name"])
        print(f"{variant}: p50 {bench['latency_ms']['p50']:.3f} ms unprofiled, ops {bench['profile']['ms_per_run']:.3f} "
              f"ms a profiled run ({bench['profile']['ms_per_run'] / bench['latency_ms']['p50']:.1%}); "
              f"convolution kernels among the report's {len(ops)} most time-consuming ops: {json.dumps({k: len(v) for k, v in kinds.items()})}; float ones: "
              f"{[n for k, v in kinds.items() if k != 'QLinearConv' for n in v][:6]}; excluded {excluded}")


if __name__ == "__main__":
    main()
