"""Static int8 ONNX made by ONNX Runtime's own quantizer: the float model (with QAT's fine-tuned
weights when there are any) is exported, pre-processed and given to
`onnxruntime.quantization.quantize_static` with the calibration split, as ONNX Runtime's
documentation does it. The result is the QDQ graph ONNX Runtime's optimizer was written for: U8
activations and S8 per-channel weights, which it fuses into QLinearConv, QLinearAdd and QGemm with
ReLU and Clip folded into their producers.

Two choices depend on the CPU. x86 without VNNI computes u8 x s8 products in saturating 16-bit
pairs, and 8-bit weights against full-range activations overflow there (measured on a 2-core
AVX2 EPYC: a MobileNetV2 fell from 0.98 to 0.92 top-1). ONNX Runtime's remedy is 7-bit weights,
`reduce_range`; edgeship takes it when the machine that builds and verifies the artifact lacks VNNI.

The activations' type follows the devices. On x86, ONNX Runtime fuses QDQ into its int8 kernels
for uint8 activations only (its QDQIsInt8Allowed is false there; int8 pairs are rewritten to
uint8 first). When every device is ARM64, edgeship takes S8S8, which ONNX Runtime's quantization
documentation names the first choice: its ARM builds fuse int8 activations directly, onto the
SDOT (ARMv8.2 dot product) and SMMLA (I8MM) GEMM kernels. The grid is the same 256 steps either
way (an int8 zero point is the uint8 one less 128), so the choice moves no value, and on an x86
host the two artifacts give the same answers. It is not measured on ARM hardware here."""

from __future__ import annotations

import ast
import logging
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgeship.environment import int8_saturates
from edgeship.formats.artifact import ExportedArtifact, Exporter
from edgeship.formats.onnx_graph import artifact_of, conv_of_batch_norm, onnx_program, strip_debug_metadata
from edgeship.formats.onnx_masks import mask_nodes
from edgeship.quantize.float_layers import within
from edgeship.quantize.flow import QuantSettings
from edgeship.targets import Target

# The recipe's observer, as the closest of ONNX Runtime's calibration methods
CALIBRATE_METHODS = {None: "MinMax", "minmax": "MinMax", "moving_average_minmax": "MinMax",
                     "histogram": "Percentile"}

ACTIVATIONS_WHY = {
    "uint8": "ONNX Runtime's x86 kernels take uint8 activations (u8 x s8: VPMADDUBSW, VNNI); its "
             "ARM64 kernels take them too (UDOT, UMMLA)",
    "int8": "every device is ARM64: S8S8 is ONNX Runtime's documented first choice, fused there onto "
            "its SDOT/SMMLA kernels (not measured on ARM hardware by edgeship)"}

MASKS_WHY = ("an attention mask's huge values reach these nodes on their way to a Softmax: quantized, "
             "the masked scores' scale would round every visible score to zero (formats/onnx_masks.py)")


@dataclass(frozen=True)
class OrtStatic:
    """How ONNX Runtime quantizes: the part of the report's quantization details it owns."""

    per_channel: bool
    reduce_range: bool
    activations: str  # "uint8", or "int8" when every device is ARM64
    calibrate_method: str
    moving_average: bool
    calibration_samples: int

    @classmethod
    def choose(cls, settings: QuantSettings, calibration_samples: int, *, arm: bool = False) -> OrtStatic:
        return cls(per_channel=settings.per_channel, reduce_range=int8_saturates(),
                   activations="int8" if arm else "uint8",
                   calibrate_method=CALIBRATE_METHODS[settings.observer],
                   moving_average=settings.observer == "moving_average_minmax",
                   calibration_samples=calibration_samples)

    def details(self) -> dict:
        return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                "activations": self.activations, "activations_why": ACTIVATIONS_WHY[self.activations],
                "weights": "int8", "per_channel": self.per_channel,
                "reduce_range": self.reduce_range,
                "reduce_range_why": ("x86 without VNNI builds this artifact: 7-bit weights keep its "
                                     "u8 x s8 int8 kernels from saturating") if self.reduce_range else
                                    "this CPU's int8 kernels do not saturate on 8-bit weights",
                "calibrate_method": self.calibrate_method, "calibration_samples": self.calibration_samples}


def quantize_static(calibration: tuple[np.ndarray, ...], settings: QuantSettings,
                    samples: int, *, arm: bool = False) -> tuple[Exporter, dict]:
    """The exporter of a static int8 ONNX artifact calibrated on the first `samples` of
    `calibration`, and how it quantizes, for the report. `arm`: every device is ARM64."""
    options = OrtStatic.choose(settings, min(samples, len(calibration[0])), arm=arm)
    return static_exporter(calibration, settings, options), options.details()


def static_exporter(calibration: tuple[np.ndarray, ...], settings: QuantSettings,
                    options: OrtStatic) -> Exporter:
    """An exporter that writes the float model's ONNX and quantizes it with ONNX Runtime, calibrated
    on `calibration` (the calibration split's inputs) and leaving `settings.float_layers` float."""
    def export_static(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        program = onnx_program(module, examples)
        excluded = nodes_of_layers(program, settings.float_layers)
        layers = strip_debug_metadata(program)
        scratch = workdir / "float"
        scratch.mkdir()
        program.save(str(scratch / "float.onnx"))
        _pre_processed(scratch / "float.onnx", scratch / "pre.onnx")
        pre = onnx.load(str(scratch / "pre.onnx"))
        if _shared_initializers_renamed(pre):
            onnx.save(pre, str(scratch / "pre.onnx"))
        masks = [n for n in mask_nodes(pre) if n not in excluded]
        path = workdir / f"{target.name}.onnx"
        reader = _Reader(program.model.graph.inputs, calibration, examples[0].shape[0],
                         options.calibration_samples)
        with ort_quantizer_quiet():
            quantize_static(str(scratch / "pre.onnx"), str(path), reader, quant_format=QuantFormat.QDQ,
                            activation_type=(QuantType.QInt8 if options.activations == "int8"
                                             else QuantType.QUInt8), weight_type=QuantType.QInt8,
                            per_channel=options.per_channel, reduce_range=options.reduce_range,
                            calibrate_method=getattr(CalibrationMethod, options.calibrate_method),
                            nodes_to_exclude=excluded + masks,
                            extra_options={"CalibMovingAverage": options.moving_average})
        _recurrent_dynamic(path, excluded)
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()
        made = artifact_of(path, workdir, layers)
        if masks:
            made.details["float_for_masks"] = {"nodes": masks, "why": MASKS_WHY}
        return made
    return export_static


def _pre_processed(float_onnx: Path, out: Path) -> None:
    """ONNX Runtime's pre-processing for quantize_static (shape inference, graph optimization).
    Its symbolic shape inference has no rule for some ops the exporter writes: a ReduceMax (what
    AdaptiveMaxPool2d(1) becomes) before a Reshape fails with "TypeError: 'NoneType' object is not
    iterable" at onnxruntime 1.32, as in ORT's own documented flow. Then ONNX's shape inference
    alone does it: ORT's `skip_symbolic_shape` option, meant for such models."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(float_onnx), str(out))
    except Exception:  # noqa: BLE001 - any failure of the symbolic pass: the documented fallback
        quant_pre_process(str(float_onnx), str(out), skip_symbolic_shape=True)


def _shared_initializers_renamed(model) -> bool:
    """Renames, in `model`, each initializer more than one node reads to `<name>__shared`; whether
    it renamed any. ONNX Runtime's QDQ
    quantizer gives each reader its own copy named `<name><i>`, checked against initializer names
    only: the exporter shares one InstanceNormalization bias ('val_12') between a TCN's six
    GroupNorms, and its copy 'val_122' was a Reshape's output, which ORT then took for a weight
    ('Quantization parameter shared mode is not supported for weight yet', ORT's own documented
    flow too, onnxruntime 1.32)."""
    import onnx

    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return False  # a subgraph may read an initializer by name from the outer scope: left as it is
    readers = Counter(name for node in graph.node for name in node.input)
    named = {v.name for v in (*graph.input, *graph.output)}
    renamed = {i.name: f"{i.name}__shared" for i in graph.initializer if readers[i.name] > 1 and i.name not in named}
    for initializer in graph.initializer:
        initializer.name = renamed.get(initializer.name, initializer.name)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    return bool(renamed)


def _recurrent_dynamic(path: Path, excluded: list[str]) -> None:
    """The static graph's LSTMs made DynamicQuantizeLSTM by ONNX Runtime's quantize_dynamic, its
    static quantizer having no int8 LSTM (quantize/float_layers.py, DYNAMIC_IN_STATIC)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(path), load_external_data=False).graph
    if not any(n.op_type == "LSTM" and n.name not in excluded for n in graph.node):
        return
    mixed = path.with_name(f"mixed-{path.name}")
    with ort_quantizer_quiet():  # its warning that the model looks quantized: it is, on purpose
        quantize_dynamic(path, mixed, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"],
                         nodes_to_exclude=excluded)
    os.replace(mixed, path)


@contextmanager
def ort_quantizer_quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer warns on the root logger about what it rightly skips (a per-channel
    axis on a LayerNorm's 1-D weight, a model already quantized), and numpy warns when it computes
    the scale of a masked tensor it will not quantize (an infinite range): nothing the user can
    act on."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="onnxruntime.quantization")
            yield
    finally:
        root.setLevel(level)


class _Reader:
    """The calibration inputs in the exported model's batch size, as ONNX Runtime's
    CalibrationDataReader protocol asks for them."""

    def __init__(self, inputs, calibration: tuple[np.ndarray, ...], batch: int, samples: int) -> None:
        names = [i.name for i in inputs]
        starts = range(0, min(samples, len(calibration[0])) - batch + 1, batch)
        self._feeds = iter([{n: a[s:s + batch] for n, a in zip(names, calibration)} for s in starts])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def nodes_of_layers(program, layers: frozenset[str]) -> list[str]:
    """The ONNX nodes that compute `layers` (module names), found by the exporter's name scopes.
    A convolution with its batch norm folded in carries the batch norm's scope: it counts for the
    convolution that feeds that batch norm, which torch.export's graph tells."""
    if not layers:
        return []
    folded = conv_of_batch_norm(program)
    excluded = []
    for node in program.model.graph.all_nodes():
        scopes = ast.literal_eval(node.metadata_props.get("pkg.torch.onnx.name_scopes", "[]"))
        scopes += [folded[s] for s in scopes if s in folded]
        if any(within(scope, layers) for scope in scopes):
            excluded.append(node.name)
    return excluded
