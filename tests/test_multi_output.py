"""A model that returns more than one tensor (a classifier and an auxiliary head): its first
output is what training, QAT, distillation and every verification read; every target exports
the whole model."""

from __future__ import annotations

import edgeship
from edgeship.recipe import parse_recipe
from support import demo_recipe

INT8 = ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]
MODELS = '''
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classes = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 4)

    def forward(self, x):
        features = self.body(x)
        return self.classes(features), self.aux(features)


def two_heads():
    return TwoHeads()
'''


def test_a_model_with_two_outputs_trains_quantizes_and_ships(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    data = demo_recipe(targets=INT8, fp32_twins=False, devices=[], budgets=[])
    data["model"]["factory"] = "models.py:two_heads"
    data["quantization"]["qat"].update(epochs=1, lr=1e-4, distillation={})  # the float model teaches
    report = edgeship.run(parse_recipe(data, "two-heads", tmp_path), tmp_path / "run", quiet=True)
    assert report.exit_code == 0, [(a.target, a.error) for a in report.artifacts]
    assert report.float.accuracy > 0.5  # trained on the first output's cross-entropy (chance: 0.1)
    for a in report.artifacts:
        assert a.status == "ok", (a.target, a.error)
        assert report.float.accuracy - a.accuracy <= 0.01, (a.target, a.accuracy)
        assert a.parity.top1_agreement >= 0.98, (a.target, a.parity)
