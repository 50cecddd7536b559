"""int8 file sizes (issue 11's size goal, `make bench`): for the int8-share table's models
(scripts/int8_share/models.py), each int8 target's file against its fp32 twin and against the
runtime's own documented flow on the same weights (peers.py), and where the bytes go.

A file is its weights (1 byte each in int8, 4 in fp32) plus what the container adds: graph or
code, per-channel scales and zero points, names, alignment. int8 divides the first part by four
and leaves the second, so a model's int8/fp32 ratio falls toward 0.25 as its weights outgrow the
container: the 3,500-weight CNN's does not reach the issue's 0.35x on any target, the
0.37 M-weight CNN's does on every one. The peer columns say whether edgeship adds bytes of its own.
Untrained weights made distinct (nn.TransformerEncoder's layers start as copies of one layer, and
torch.jit.freeze pools equal constants into one), calibrated on random inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.environment import environment
from peers import INT8, PEER_OF, edgeship_export, peer_artifact

_TABLE = Path(__file__).resolve().parents[2] / "scripts" / "int8_share" / "models.py"
MODELS = {"cnn": [1, 1, 8, 8], "wide_cnn": [1, 1, 8, 8],
          "transformer": [1, 8, 8], "wide_transformer": [1, 8, 8]}
TWIN = {"torchscript-fbgemm": "torchscript-fp32", "onnx-int8": "onnx-fp32",
        "executorch-xnnpack": "executorch-fp32"}


def _table_models():
    spec = importlib.util.spec_from_file_location("int8_share_models", _TABLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sizes(model, calibration: np.ndarray, folder: Path) -> dict[str, dict]:
    """{int8 target: bytes of edgeship's file, of its fp32 twin and of the peer's; the weights
    the artifact's compute ops hold}"""
    twins = {name: edgeship_export(name, model, calibration, folder / name) for name in set(TWIN.values())}
    rows = {}
    for target in INT8:
        int8 = edgeship_export(target, model, calibration, folder / target)
        (folder / f"peer-{target}").mkdir()
        peer = peer_artifact(target, model, calibration, twins["onnx-fp32"].path, folder / f"peer-{target}")
        rows[target] = {"int8": int8.size_bytes, "fp32": twins[TWIN[target]].size_bytes,
                        "peer": peer.stat().st_size, "weights": int8.details["int8_share"]["weights"]}
    return rows


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_size_against_the_twin_and_the_runtimes_own_flow(benchmark, figure, name, tmp_path):
    torch.manual_seed(0)
    model = getattr(_table_models(), name)().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    calibration = np.random.default_rng(0).standard_normal([256, *MODELS[name][1:]]).astype(np.float32)
    rows = _sizes(model, calibration, tmp_path)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # figures only; --benchmark-only needs it
    host = environment()["host"]
    cells = []
    for target, r in rows.items():
        container_int8, container_fp32 = r["int8"] - r["weights"], r["fp32"] - 4 * r["weights"]
        cells.append(f"{target} {r['int8']:,} B = {r['int8'] / r['fp32']:.2f}x its twin "
                     f"({r['fp32']:,} B), {r['int8'] / r['peer']:.2f}x {PEER_OF[target]} "
                     f"({r['peer']:,} B); container {container_int8:,} B vs the twin's {container_fp32:,} B")
    weights = max(r["weights"] for r in rows.values())
    figure(f"{name}, {weights:,} weights: {'; '.join(cells)} · {host['cpu']}, int8 ISA flags: "
           f"{' '.join(host['int8_isa']) or 'none'}",
           sizes=rows, weights=weights)
    for target, r in rows.items():
        # edgeship adds nothing to what the runtime's flow writes: a TorchScript archive repeats
        # its file's name in each of its ~30 entries ("torchscript-fbgemm/..." vs "fx-fbgemm/...")
        assert r["int8"] <= r["peer"] + 1024, (target, r)
        if r["weights"] > 300_000:  # where weights make the file, issue 11's goal holds
            assert r["int8"] <= 0.35 * r["fp32"], (target, r)
