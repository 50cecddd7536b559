"""Models with two inputs, and example inputs with a batch above 1, through the real CLI: every
flow and target makes an artifact that answers the test split in its own runtime like the float
model does."""

from __future__ import annotations

from pathlib import Path

from support import QUICK_BENCHMARK, CliResult, run_cli, write_recipe

# A digit seen through two inputs: the top half of its image (a conv branch) and four numbers
# summing up its bottom half (a linear branch). Items are ((image, vector), label), which a
# DataLoader's default collate turns into [images, vectors]: a list, not a tuple.
FACTORIES = '''
import torch
from torch import nn
from torch.utils.data import Dataset

from edgeship.data import Splits


class TopAndBottom(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.vector = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.head = nn.Linear(8 * 4 * 4 + 16, 10)

    def forward(self, image, vector):
        return self.head(torch.cat([self.image(image), self.vector(vector)], dim=1))


def model():
    return TopAndBottom()


class Halves(Dataset):
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i].clone()
        bottom = image[0, 4:].mean(dim=0).reshape(4, 2).mean(dim=1)  # column pairs of rows 4-7
        image[0, 4:] = 0
        return (image, bottom), self.labels[i]


def splits(test=200, calibration=64, train=800):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    parts = {"test": order[:test], "calibration": order[test:test + calibration],
             "train": order[test + calibration:test + calibration + train]}
    return Splits(**{name: Halves(images[idx], labels[idx]) for name, idx in parts.items()})
'''

PT2E_TARGETS = ["onnx-int8", "executorch-xnnpack"]
ALL_TARGETS = ["torchscript-fbgemm", "torchscript-qnnpack", *PT2E_TARGETS]


def _run(tmp_path: Path, *, targets: list[str], batch: int, test_samples: int,
         devices: list[str]) -> CliResult:
    (tmp_path / "factories.py").write_text(FACTORIES)
    recipe = {
        "name": "two-inputs", "seed": 0, "targets": targets, "devices": devices, "fp32_twins": False,
        "model": {"factory": "factories.py:model", "train": {"epochs": 8, "lr": 0.01},
                  "example_inputs": [{"shape": [batch, 1, 8, 8]}, {"shape": [batch, 4]}]},
        "data": {"factory": "factories.py:splits", "kwargs": {"test": test_samples}, "batch_size": 32},
        "quantization": {"calibration_batches": 2, "qat": {"enabled": False}},
        "benchmark": dict(QUICK_BENCHMARK),
    }
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-3000:]
    return result


def _assert_verified_close_to_float(report: dict, targets: list[str]) -> None:
    float_accuracy = report["float"]["accuracy"]
    assert float_accuracy >= 0.8, float_accuracy  # the two branches learned the digits (chance: 0.1)
    artifacts = {a["target"]: a for a in report["artifacts"]}
    assert sorted(artifacts) == sorted(targets)
    for name, artifact in artifacts.items():
        assert artifact["status"] == "ok", (name, artifact["error"])
        assert abs(artifact["accuracy"] - float_accuracy) <= 0.03, (name, artifact["accuracy"])
        assert artifact["parity"]["top1_agreement"] >= 0.95, (name, artifact["parity"])


def test_a_two_input_model_ships_to_every_target(tmp_path):
    report = _run(tmp_path, targets=ALL_TARGETS, batch=1, test_samples=200, devices=[]).report()
    _assert_verified_close_to_float(report, ALL_TARGETS)
    assert {a["flow"] for a in report["artifacts"]} == {"fx-fbgemm", "fx-qnnpack", "ort-qdq", "pt2e-xnnpack"}


def _input_shapes(path: Path) -> list[list[int]]:
    if path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        return [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(str(path)).load_method("forward").metadata
    return [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]


def test_example_inputs_with_a_batch_of_4_make_batch_4_pt2e_artifacts(tmp_path):
    # 198 test samples: the runner pads the last batch of 4 and drops the padding
    result = _run(tmp_path, targets=PT2E_TARGETS, batch=4, test_samples=198, devices=["local"])
    report = result.report()
    _assert_verified_close_to_float(report, PT2E_TARGETS)
    for artifact in report["artifacts"]:
        assert _input_shapes(result.out / artifact["path"]) == [[4, 1, 8, 8], [4, 4]], artifact["target"]
        (bench,) = artifact["benchmarks"]
        assert bench["device"] == "local" and bench["iterations"] >= QUICK_BENCHMARK["min_iterations"]
