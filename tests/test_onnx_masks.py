"""Attention on the ONNX targets. Masks in onnx-int8: the nodes that carry a mask's huge values to
a Softmax stay float, so ONNX Runtime's static quantizer does not round every visible attention
score to zero. 3-D scaled_dot_product_attention, which the exporter refuses, is decomposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeship.formats.onnx_static import quantize_static
from edgeship.quantize.flow import QuantSettings
from edgeship.targets import TARGETS
from attention import TOKENS, VOCAB, Attention


def _int8_against_float(mask: str, workdir) -> tuple[float, dict]:
    """The onnx-int8 artifact's relative error against the float model on held-out tokens, and
    its details."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = Attention(mask).eval()
    tokens = torch.randint(0, VOCAB, (96, TOKENS))
    exporter, _ = quantize_static((tokens[:64].numpy(),), QuantSettings(), 64)
    made = exporter(model, (tokens[:1],), TARGETS["onnx-int8"], workdir)
    session = ort.InferenceSession(str(made.path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    int8 = np.concatenate([session.run(None, {name: tokens[i:i + 1].numpy()})[0] for i in range(64, 96)])
    with torch.no_grad():
        expected = model(tokens[64:]).numpy()
    return float(np.linalg.norm(int8 - expected) / np.linalg.norm(expected)), made.details


@pytest.mark.parametrize("mask", ["sdpa", "sdpa_3d", "masked_fill", "additive", "buffer"])
def test_masked_attention_keeps_its_scores(mask, tmp_path):
    error, details = _int8_against_float(mask, tmp_path)
    kept = details["float_for_masks"]["nodes"]
    assert any("oftmax" in n for n in kept), kept
    assert error < 0.05, (mask, error, kept)


def test_unmasked_attention_and_large_constants_stay_quantized(tmp_path):
    error, details = _int8_against_float("scaled", tmp_path)
    assert "float_for_masks" not in details
    assert details["onnx_ops"].get("QuantizeLinear", 0) > 4
    assert error < 0.05, error


def test_3d_attention_exports_as_the_math_it_computes(tmp_path):
    import onnxruntime as ort

    from edgeship.formats.onnx_graph import onnx_program

    torch.manual_seed(0)
    model, tokens = Attention("sdpa_3d").eval(), torch.randint(0, VOCAB, (1, TOKENS))
    with pytest.raises(Exception, match="only 4D query, key, and value"):  # the exporter alone
        torch.onnx.export(model, (tokens,), dynamo=True, verbose=False)
    onnx_program(model, (tokens,)).save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    answers = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0]
    with torch.no_grad():
        assert np.abs(answers - model(tokens).numpy()).max() < 1e-4
