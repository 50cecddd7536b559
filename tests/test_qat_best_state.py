"""QAT cannot make things worse: each flow is scored after calibration and after every epoch on a
split it never trains on, and the best state ships — the calibrated one when fine-tuning loses."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeship.data import stack
from edgeship.examples import digits
from edgeship.progress import Progress
from edgeship.quantize.best_state import BestState
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.evaluate import logits, top1
from edgeship.quantize.flows import flow_for
from edgeship.quantize.qat import finetune
from edgeship.quantize.training import train
from edgeship.recipe import QATSection
from edgeship.targets import Flow

from support import demo_recipe, run_cli, write_recipe


@pytest.fixture(scope="module")
def data():
    return digits.splits()


@pytest.fixture(scope="module")
def undertrained(data):
    """A float model two short epochs into training (0.855 top-1 on calibration): QAT has room
    to improve it."""
    torch.manual_seed(0)
    model = digits.cnn(width=8)
    train(model, data.train, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), epochs=2,
          batch_size=64, seed=0, progress=Progress(enabled=False), label="float")
    return model.eval()


def _tracked_qat(model, data, flow: Flow, qat: QATSection):
    qf = flow_for(flow)
    prepared = calibrate(qf, model, (data.test[0][0].unsqueeze(0),), data.calibration, batches=2,
                         batch_size=64, qat=True)
    calibrated = copy.deepcopy(prepared.state_dict())
    tracker = BestState(qf, prepared, stack(data.calibration))
    tracker.score(0)
    finetune(qf, prepared, data.train, qat=qat, batch_size=64, seed=0, on_epoch_end=tracker.score)
    return qf, prepared, calibrated, tracker


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.PT2E_XNNPACK])
def test_a_fine_tune_that_ruins_the_model_ships_the_calibrated_state(undertrained, data, flow):
    qf, prepared, calibrated, tracker = _tracked_qat(undertrained, data, flow,
                                                     QATSection(epochs=2, lr=20.0, momentum=0.9))
    assert [s.epoch for s in tracker.history] == [0, 1, 2]
    assert max(s.accuracy for s in tracker.history[1:]) < tracker.history[0].accuracy - 0.2
    assert tracker.restore().epoch == 0
    for key, value in prepared.state_dict().items():
        assert torch.equal(value, calibrated[key]), key
    test = stack(data.test)
    with qf.engine():
        assert top1(logits(qf.convert(prepared), test), test.labels) > 0.6


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.PT2E_XNNPACK])
def test_a_fine_tune_that_helps_ships_its_best_epoch(undertrained, data, flow):
    qf, prepared, calibrated, tracker = _tracked_qat(undertrained, data, flow,
                                                     QATSection(epochs=2, lr=3e-3, optimizer="adam"))
    best = tracker.restore()
    assert best.epoch > 0 and best.accuracy > tracker.history[0].accuracy
    assert best.accuracy == max(s.accuracy for s in tracker.history)
    assert all(s.loss is not None for s in tracker.history[1:])
    # What ships is the state that scored best, not merely the last one
    rescored = BestState(qf, prepared, stack(data.calibration)).score(best.epoch)
    assert rescored.accuracy == best.accuracy


def test_the_report_shows_each_flows_trajectory_and_what_shipped(tmp_path):
    recipe = demo_recipe(quantization__qat={"enabled": True, "epochs": 2, "lr": 20.0},
                         targets=["torchscript-fbgemm", "executorch-xnnpack", "onnx-int8"], fp32_twins=False)
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr
    report = result.report()
    md = (tmp_path / "run" / "report.md").read_text()
    for artifact in report["artifacts"]:
        quantization = artifact["details"]["quantization"]
        history = quantization["qat_history"]
        assert history["split"] == "calibration"
        assert [e["epoch"] for e in history["epochs"]] == [0, 1, 2]
        assert history["shipped_epoch"] == 0, history  # lr 20 ruins it: calibration ships
        assert report["float"]["accuracy"] - artifact["accuracy"] < 0.02
        qat, post_training = history.get("qat_accuracy"), history.get("post_training_accuracy")
        calibrated = f"{artifact['flow']}: QAT fine-tuning did not beat calibration, the calibrated state shipped"
        if artifact["flow"] == "ort-qdq":  # the calibrated weights are the float weights: one artifact
            assert history["shipped"] == "post-training" and qat is None and post_training is None  # left out of report.json
            assert calibrated in md
            continue
        # Converted, the calibrated QAT state meets the post-training model; QAT ships only when
        # it wins beyond the split's noise
        assert 0.5 < qat <= 1 and 0.5 < post_training <= 1
        wins = (history["p_value"] < 0.05 and history["qat_loss"] < history["post_training_loss"]
                and qat >= post_training)
        assert history["shipped"] == ("qat" if wins else "post-training")
        assert history["qat_loss"] > 0 and history["post_training_loss"] > 0
        lead = history["qat_only_right"] - history["post_training_only_right"]
        assert lead == round((qat - post_training) * len(digits.splits().calibration))
        line = {"qat": f"{artifact['flow']}: QAT fine-tuning did not beat calibration; QAT's calibrated state "
                       f"(its fake-quant ranges) beat calibration alone after conversion and shipped",
                "post-training": f"{artifact['flow']}: QAT did not beat calibration alone beyond the "
                                 f"split's noise after conversion, the post-training model shipped"}[history["shipped"]]
        assert line in md and f"calibration only {post_training:.4f}" in md
        assert quantization["observer"] == ("fake-quant" if history["shipped"] == "qat" else "histogram")
        # The recipe's rate is obeyed and no probe runs; the freezes it left out are defaults
        assert history["settings"]["lr"] == {"value": 20.0, "source": "recipe"} and "probe" not in history
        assert history["settings"]["freeze_bn_after_epochs"] == {"value": 1, "source": "default"}
    assert "Quantization-aware training" in (tmp_path / "run" / "report.html").read_text()


def _factory_module(tmp_path, body: str) -> str:
    (tmp_path / "splits_factory.py").write_text(
        "from edgeship.examples import digits\nfrom edgeship.data import Splits\n"
        "from torch.utils.data import Subset\n\n" + body)
    return "splits_factory.py:splits"


@pytest.mark.parametrize("body, message", [
    ("def splits():\n    s = digits.splits()\n    return Splits(s.train, s.calibration, s.test, "
     "validation=Subset(s.test, []))\n", "the validation split is empty"),
    ("def splits():\n    s = digits.splits()\n    return Splits(s.train, s.calibration, s.test, "
     "validation=Subset(s.train, range(40)))\n",
     "the validation split shares 40 samples with the train split"),
])
def test_a_validation_split_that_is_empty_or_holds_train_samples_is_bad_input(tmp_path, body, message):
    recipe = demo_recipe(data__factory=_factory_module(tmp_path, body))
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_validation_split_is_what_qat_is_scored_on(tmp_path):
    body = ("def splits():\n    s = digits.splits()\n    n = len(s.calibration)\n"
            "    return Splits(s.train, Subset(s.calibration, range(n // 2)), s.test,\n"
            "                  validation=Subset(s.calibration, range(n // 2, n)))\n")
    recipe = demo_recipe(data__factory=_factory_module(tmp_path, body), targets=["torchscript-fbgemm"],
                         fp32_twins=False, quantization__qat={"enabled": True, "epochs": 1})
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr
    history = result.report()["artifacts"][0]["details"]["quantization"]["qat_history"]
    assert history["split"] == "validation" and len(history["epochs"]) == 2
    # The recipe left the rate out: the probe chose it, on the same split, and the report says so
    trials = history["probe"]["trials"]
    assert len(trials) == 4 and history["settings"]["lr"]["source"] == "probe"
    running = [t for t in trials if not t.get("worse")]  # not worse than the lowest beyond noise
    best = max(running, key=lambda t: (t["moved"], -t["lr"]))
    assert history["settings"]["lr"]["value"] == best["lr"]
    assert history["settings"]["optimizer"] == {"value": best["optimizer"], "source": "probe"}
    # A 1-epoch run freezes nothing (report.json leaves the None value out)
    assert history["settings"]["freeze_bn_after_epochs"] == {"source": "default"}
    assert "probe: 4 rates x" in (tmp_path / "run" / "report.md").read_text()


def test_qat_with_the_higher_mean_loss_does_not_ship_however_many_samples_it_wins():
    """Many small gains, a few large losses: the signed-rank test finds QAT's loss lower (it weighs
    ranks), the mean says higher; the post-training model ships."""
    import numpy as np

    from edgeship.metrics import TaskLoss, builtin, cross_entropy
    from edgeship.pipeline.post_training import compare, qat_ships

    labels = np.zeros(200, dtype=np.int64)
    post_training = np.tile([[2.0, 0.0]], (200, 1)).astype(np.float32)
    qat = post_training.copy()
    qat[:180, 0] += 0.1  # 180 samples a little more sure of the right class
    qat[180:, 0] -= 1.5  # 20 much less sure, still right
    verdict = compare(qat, post_training, labels, builtin("top1"), TaskLoss("cross_entropy", cross_entropy))
    assert verdict["p_value"] < 0.05 and verdict["qat_loss"] > verdict["post_training_loss"], verdict
    assert verdict["qat_accuracy"] == verdict["post_training_accuracy"] == 1.0
    assert not qat_ships(verdict, builtin("top1"))
    better = compare(post_training + [[0.1, 0.0]], post_training, labels, builtin("top1"),
                     TaskLoss("cross_entropy", cross_entropy))
    assert qat_ships(better, builtin("top1")), better


def test_a_fine_tune_whose_loss_stops_being_finite_keeps_the_calibrated_state(tmp_path):
    """The target is not lost: the calibrated state stays, the convert stage weighs it against
    calibration alone, and the report says why fine-tuning stopped."""
    recipe = demo_recipe(quantization__qat={"enabled": True, "epochs": 1, "lr": 1e12},
                         targets=["torchscript-fbgemm", "executorch-xnnpack"], fp32_twins=False)
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr
    report = result.report()
    for artifact in report["artifacts"]:
        assert artifact["status"] == "ok", artifact
        history = artifact["details"]["quantization"]["qat_history"]
        assert history["shipped_epoch"] == 0 and "the loss is" in history["diverged"], history
        assert report["float"]["accuracy"] - artifact["accuracy"] < 0.02
    assert "fine-tuning stopped: QAT" in (tmp_path / "run" / "report.md").read_text()


_CHANNELS_FIRST_LAYER_NORM = '''
import torch
from torch import nn


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm as it is written there."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


def net():
    """A bias-free patchify stem on digits' black background: zero variance across channels there,
    which fake quantization's `s + eps` rounds to 0 (0 / 0); the float model answers 0."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.norm, self.head = nn.Conv2d(1, 16, 2, stride=2, bias=False), LayerNorm2d(16), nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.norm(self.stem(x)).mean((2, 3)))
    return Net()
'''


def test_a_fake_quant_model_that_answers_nan_ships_its_post_training_model(tmp_path):
    """From calibration on, QAT's forward is NaN on all three PyTorch flows (a ConvNeXt's LayerNorm);
    the post-training model is finite (this stem's int8 is poor anyway: the test is of what ships,
    not how well). The target was lost (exit 3); now calibration alone ships."""
    (tmp_path / "layer_norm_net.py").write_text(_CHANNELS_FIRST_LAYER_NORM)
    recipe = demo_recipe(model__factory=str(tmp_path / "layer_norm_net.py") + ":net",
                         model__train={"epochs": 1, "lr": 0.01}, quantization__qat={"enabled": True, "lr": 1e-4},
                         targets=["torchscript-fbgemm"], fp32_twins=False, devices=[], budgets=[])
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr
    (artifact,) = result.report()["artifacts"]
    assert artifact["status"] == "ok", artifact
    quantization = artifact["details"]["quantization"]
    history = quantization["qat_history"]
    assert history["shipped"] == "post-training" and "the loss is nan" in history["diverged"], history
    assert quantization["observer"] == "histogram"  # the post-training observers' model shipped
    assert "QAT's state cannot ship, the post-training model shipped" in (tmp_path / "run" / "report.md").read_text()
