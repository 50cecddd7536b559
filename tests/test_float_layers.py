"""`quantization.float_layers`: modules the user keeps float, on every static flow as each
runtime's own flow does it, read back from each real artifact's int8 share; and the names a
recipe gets wrong."""

from __future__ import annotations

import pytest
import torch

import edgeship
from edgeship.examples.digits import cnn
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.recipe import parse_recipe
from edgeship.targets import Flow
from support import demo_recipe, run_cli, write_recipe
from test_bad_input import _fails_with

INT8 = ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]
KEPT = ["classifier", "features.0"]  # the digits CNN's first convolution and its classifier
WHY = "named in the recipe's quantization.float_layers"


@pytest.mark.parametrize("qat", [False, True], ids=["ptq", "qat"])
def test_the_layers_a_recipe_names_stay_float_in_every_artifact(tmp_path, qat):
    data = demo_recipe(targets=INT8, fp32_twins=False, devices=[], budgets=[])
    data["quantization"].update(float_layers=KEPT)
    data["quantization"]["qat"].update(enabled=qat, epochs=1, lr=1e-4)
    report = edgeship.run(parse_recipe(data, "kept", tmp_path), tmp_path / "run", quiet=True)
    assert report.exit_code == 0, [(a.target, a.error) for a in report.artifacts]
    for a in report.artifacts:
        assert a.status == "ok", (a.target, a.error)
        assert a.details["quantization"]["float_layers_recipe"] == sorted(KEPT)
        ops = a.int8_share.float_ops  # named by the layer, or the module the flow fused it into
        assert {op.why for op in ops} == {WHY}, (a.target, ops)
        for name in KEPT:
            assert any(op.name == name or op.name.startswith(name + ".") for op in ops), (a.target, name, ops)
        # the rest is int8: the two float layers are under a fifth of the CNN's MACs
        assert 0.8 < a.int8_share.macs_fraction < 1.0, (a.target, a.int8_share)
        assert report.float.accuracy - a.accuracy <= 0.01, (a.target, a.accuracy)


def test_a_name_that_is_not_a_module_of_the_model(tmp_path):
    recipe = demo_recipe()
    recipe["quantization"]["float_layers"] = ["classifier", "clasifier"]
    _fails_with(tmp_path, recipe, "quantization.float_layers: 'clasifier' is not a module of the model "
                                  "(did you mean 'classifier'?); its modules: features, features.0, "
                                  "features.1, ", "… (13 in all)")


def test_a_name_given_twice(tmp_path):
    recipe = demo_recipe()
    recipe["quantization"]["float_layers"] = ["classifier", "classifier"]
    _fails_with(tmp_path, recipe, "quantization.float_layers", "'classifier' more than once")


def test_a_float_conv_with_batch_norm_in_onnx_runtime_qat():
    """torchao's QAT conv-bn fusion fails on the conv X86InductorQuantizer declines (IndexError)
    at the pinned versions; the ORT flow removes the empty annotation, so the conv stays float."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    model = cnn().eval()
    examples = (torch.randn(2, 1, 8, 8),)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    quantizer.set_module_name_qconfig("features.0", None)
    graph = torch.export.export(model, examples).module()
    with pytest.raises(IndexError):
        prepare_qat_pt2e(graph, quantizer)
    flow = flow_for(Flow.ORT_QDQ, QuantSettings(float_layers=frozenset({"features.0"})))
    prepared = flow.prepare(model, examples, qat=True)
    convs = [n for n in prepared.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    fed_by = [{a.target for a in n.args[:2] if hasattr(a, "target")} for n in convs]
    assert len(convs) == 3  # the first sees its input and weight as they are; the others fake-quantized
    assert not any("quant" in str(t) for t in fed_by[0]), fed_by[0]
    assert all(any("quant" in str(t) or "activation_post_process" in str(t) for t in f) for f in fed_by[1:]), fed_by
