"""torchao PT2E flows. With the XNNPACK quantizer: the path to ExecuTorch (lowered to XNNPACK).
With the x86 quantizer's config (U8 activations, S8 per-channel weights, what ONNX Runtime's int8
kernels take): the fine-tuning half of the ONNX Runtime flow, whose int8 graph ONNX Runtime's own
quantizer makes at export."""

from __future__ import annotations

import copy
import dataclasses
from abc import abstractmethod

import torch
from torch import nn

from edgeship.engines import captures_logged
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.mask_paths import mask_paths, module_path, where
from edgeship.quantize.max_pool import adaptive_max_pools_as_max_pools
from edgeship.quantize.qat_capture import capture_form, pt2e_switchable
from edgeship.quantize.recurrent import quantizable_lstms
from edgeship.quantize.shared_conv_bn import shared_batch_norms_as_affine
from edgeship.quantize.transposed_bn import transposed_bn_folded
from edgeship.targets import Flow


def tracing_batch(example_inputs: tuple) -> tuple:
    """The example inputs with a batch of at least 2: torch.export treats a size of 1 as a
    constant, so a batch-1 example would fix the batch. A larger example batch is kept as given
    (expanding it to 2 fails: only a size-1 dimension can be expanded)."""
    if example_inputs[0].shape[0] >= 2:
        return example_inputs
    return tuple(x.expand(2, *x.shape[1:]).contiguous() for x in example_inputs)


class Pt2eFlow(QuantFlow):
    """A PT2E flow; subclasses choose the quantizer."""

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        model = transposed_bn_folded(model, grouped_only=True)  # torchao's own fold fails on those
        model = capture_form(model, pt2e_switchable) if qat else copy.deepcopy(model).eval()
        # Export with a dynamic batch: a graph specialised to batch 1 makes QAT train one sample
        # at a time, which collapses batch norm (seen: 0.994 -> 0.75 accuracy).
        batch = torch.export.Dim("batch", min=1, max=4096)
        batched = tracing_batch(example_inputs)
        with captures_logged():
            graph = torch.export.export(model, batched, dynamic_shapes=tuple({0: batch} for _ in batched)).module()
        return graph if qat else shared_batch_norms_as_affine(graph)  # prepare_pt2e's fold breaks those

    def prepare_captured(self, captured: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        graph = copy.deepcopy(captured)
        masks = mask_paths(graph)
        self.float_for_masks = [where(n, module_path(n)) for n in masks]
        quantizer = self.quantizer(qat=qat, masks=frozenset(n.name for n in masks))
        return prepare_qat_pt2e(graph, quantizer) if qat else prepare_pt2e(graph, quantizer)

    @abstractmethod
    def quantizer(self, *, qat: bool, masks: frozenset[str] = frozenset()):
        """The torchao quantizer, with the recipe's float layers and the nodes named in `masks`
        (on an attention mask's path, mask_paths.py) left out."""

    def freeze_bn(self, prepared: nn.Module) -> None:
        # An exported graph has no module to flip: batch norm in eval form uses its running
        # statistics, and gradients still flow, which is what freezing them means.
        self.set_eval(prepared)

    def freeze_observers(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import disable_observer

        prepared.apply(disable_observer)

    def set_train(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_train

        self._switch(prepared, True, move_exported_model_to_train)

    def set_eval(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        self._switch(prepared, False, move_exported_model_to_eval)

    @staticmethod
    def _switch(prepared: nn.Module, training: bool, move) -> None:
        # Moving an exported graph between train and eval form rewrites its batch-norm and
        # dropout patterns, re-exporting each pattern: 0.7 s a switch on the MobileNetV2
        # example, more than a QAT step. The graph remembers its form in its meta, which a deep
        # copy keeps (a GraphModule's deep copy drops other attributes).
        if prepared.meta.get("edgeship_training") is training:
            return
        move(prepared)
        prepared.meta["edgeship_training"] = training

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = copy.deepcopy(prepared)
        self.set_eval(prepared)
        return without_unread_state(without_batch_counters(convert_pt2e(prepared)))


def without_batch_counters(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`graph` without batch norm's `num_batches_tracked += 1`, which only training reads.
    torchao's convert_pt2e folds a QAT conv2d-bn with its counter but leaves the counter's
    in-place add behind after a conv1d-bn (torchao 0.18): ExecuTorch then keeps the counter as a
    buffer each call mutates, and warns."""
    for node in list(graph.graph.nodes):
        counter = node.args[0] if node.target is torch.ops.aten.add_.Tensor else None
        if counter is not None and not node.users and counter.op == "get_attr" \
                and counter.target.endswith("num_batches_tracked"):
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def without_unread_state(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """`graph` without the buffers and parameters no node reads. After a QAT graph's conv-bn
    fold, batch norm's running statistics stay on the module though nothing reads them;
    torch.export lifts every buffer into the program, and the .pte carried them: 54 dead tensors,
    12% of a ShuffleNet's file (the post-training graph has none)."""
    read = {n.target for n in graph.graph.nodes if n.op in ("get_attr", "call_module")}
    for name, _ in [*graph.named_buffers(), *graph.named_parameters()]:
        if name not in read and not any(name.startswith(f"{r}.") for r in read):
            owner, _, attribute = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, attribute)
    graph.delete_all_unused_submodules()
    return graph


class Pt2eXnnpackFlow(Pt2eFlow):
    flow = Flow.PT2E_XNNPACK

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        # what ExecuTorch can load: an adaptive max pool is not Core ATen, the max pool it equals is
        return super().capture(quantizable_lstms(adaptive_max_pools_as_max_pools(model)), example_inputs, qat=qat)

    def quantizer(self, *, qat: bool, masks: frozenset[str] = frozenset()):
        quantizer = _xnnpack_quantizer(qat=qat).set_global(self.quantization_config(qat=qat))
        return self._declining_float_layers(quantizer, masks)

    def _declining_float_layers(self, quantizer, masks: frozenset[str] = frozenset()):
        if self.settings.float_layers or masks:
            # set_module_name(name, None) is "not supported yet" in XNNPACKQuantizer: a filter
            # that declines every node inside a float layer does the same.
            from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

            inside = [get_module_name_filter(name) for name in self.settings.float_layers]
            quantizer.set_filter_function(
                lambda node: node.name not in masks and not any(f(node) for f in inside))
        return quantizer

    def convert_dynamic(self, model: nn.Module, examples: tuple) -> nn.Module:
        """Linear layers with int8 weights and activations quantized at run time."""
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = self._declining_float_layers(XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=self.settings.per_channel, is_dynamic=True)))
        prepared = prepare_pt2e(self.capture(model, examples, qat=False), quantizer)
        prepared(*examples)  # dynamic observers are placeholders; one pass fixes their dtypes
        return convert_pt2e(prepared)

    def quantization_config(self, *, qat: bool):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

        config = get_symmetric_quantization_config(is_per_channel=self.settings.per_channel, is_qat=qat)
        observer = {"minmax": MinMaxObserver,
                    "moving_average_minmax": MovingAverageMinMaxObserver}.get(self.settings.observer)
        if observer is None:  # histogram is XNNPACK's own default for calibration
            return config
        activation = dataclasses.replace(config.input_activation,
                                         observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
        return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def _xnnpack_quantizer(*, qat: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    if not qat:
        return XNNPACKQuantizer()

    class XnnpackQatQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            return transposed_weights_per_output_channel(super().annotate(model))

    return XnnpackQatQuantizer()


def transposed_weights_per_output_channel(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """QAT's per-channel fake quantization of each transposed convolution's weight on axis 1, the
    output channels of its [in, out, kH, kW] weight: the only axis XNNPACK's deconvolution takes
    (with one group), and the one the XNNPACK quantizer gives it after calibration. In QAT it
    ended on axis 0, per input channel, and the export failed ("Missing out variants:
    quantized_decomposed::dequantize_per_channel", XNNPACK's partitioner refusing the layer):
    the conv-bn annotator names no axis for a transposed convolution, and torchao passes an axis
    only to a class named "PerChannel...", not to the QAT config's fused fake-quant, whose kernel
    takes axis 0 alone. A plain FakeQuantize takes the axis given to it."""
    from torchao.quantization.pt2e import FakeQuantize, MovingAveragePerChannelMinMaxObserver

    fake_quant = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, ch_axis=1, eps=2**-12)
    for node in model.graph.nodes:
        annotation = node.meta.get("quantization_annotation")
        if annotation is None or node.target not in TRANSPOSED_CONVS or _groups(node) != 1:
            continue
        spec = annotation.input_qspec_map.get(node.args[1])
        if spec is not None and spec.qscheme == torch.per_channel_symmetric:
            annotation.input_qspec_map[node.args[1]] = dataclasses.replace(
                spec, ch_axis=1, observer_or_fake_quant_ctr=fake_quant)
    return model


TRANSPOSED_CONVS = (torch.ops.aten.conv_transpose1d.default, torch.ops.aten.conv_transpose2d.input)


def _groups(transposed_conv: torch.fx.Node) -> int:
    # aten.conv_transpose{1,2}d(input, weight, bias, stride, padding, output_padding, groups, dilation)
    args = transposed_conv.args
    return args[6] if len(args) > 6 else transposed_conv.kwargs.get("groups", 1)


def one_partition_per_call(graph: nn.Module, float_layers: frozenset[str]) -> nn.Module:
    """`graph` (an exported one, changed in place) with each later call of a module under a path
    of its own. torch.export keys the k-th later call `...@k` in `nn_module_stack` but gives every
    call the module's path, and torchao groups ops into source partitions by that path: a module
    called twice (torchvision's BasicBlock calls its one `self.relu` twice) is one partition with
    two outputs, which X86InductorQuantizer refuses ("Input partition has more than one output
    node"). A float layer keeps its path: the quantizer leaves it out by that name."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (path, kind) = list(stack.items())[-1]
        call = key.rpartition("@")[2]
        if "@" in key and call.isdigit() and path not in float_layers:
            stack[key] = (f"{path}@{call}", kind)
    return graph


class OrtQdqFlow(Pt2eFlow):
    """The ONNX Runtime flow. In PyTorch, calibration and QAT use the config of ONNX Runtime's x86
    int8 kernels (torchao's X86InductorQuantizer: U8 asymmetric activations, S8 symmetric
    per-channel weights), so fine-tuning learns against the grid the artifact runs on. `convert`
    gives the float model carrying the fine-tuned weights: ONNX Runtime's own quantize_static makes
    the int8 QDQ graph from it at export, the graph its optimizer fuses into QLinearConv,
    QLinearAdd and QGemm kernels, with ReLU and Clip folded into their producers."""

    flow = Flow.ORT_QDQ
    quantizes_at_export = True

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        # what `convert` gives back: with the fold capture makes, so the fine-tuned weights fit it
        model = transposed_bn_folded(model, grouped_only=True)
        self._float_model, self._fine_tuned = model, qat
        return one_partition_per_call(super().capture(model, example_inputs, qat=qat), self.settings.float_layers)

    def quantizer(self, *, qat: bool, masks: frozenset[str] = frozenset()):
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        # `masks` unused: X86InductorQuantizer annotates no lone add, mul or softmax (checked on the
        # mask tests' attention), and ONNX Runtime's quantizer leaves the same nodes float at export
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=qat))
        for name in sorted(self.settings.float_layers):
            quantizer.set_module_name_qconfig(name, None)
        return _declined_unannotated(quantizer) if self.settings.float_layers else quantizer

    def int8_in_pytorch(self, prepared: nn.Module) -> nn.Module:
        """ONNX Runtime's int8 as PyTorch simulates it: PT2E's reference model on the same U8/S8
        grid (ONNX Runtime's own calibration and `reduce_range` aside)."""
        return super().convert(prepared)

    def convert(self, prepared: nn.Module) -> nn.Module:
        """The float model with `prepared`'s weights and batch-norm statistics: torch.export keeps
        the float model's parameter names, and fake quantization only adds entries beside them.
        Calibration alone changes no weight (and prepare_pt2e folds batch norm away): the float model."""
        model = copy.deepcopy(self._float_model).eval()
        if not self._fine_tuned:
            return model
        trained = prepared.state_dict()
        lost = [name for name in model.state_dict() if name not in trained]
        if lost:
            raise RuntimeError(f"the fine-tuned graph has no {lost[0]!r}: cannot give its weights "
                               f"back to the float model")
        model.load_state_dict({name: trained[name] for name in model.state_dict()})
        return model


def _declined_unannotated(quantizer):
    """`quantizer`, with the empty annotations it leaves on the nodes of float layers removed.
    X86InductorQuantizer marks a node it declines as annotated with no input or output spec, and
    torchao's QAT conv-bn fusion then indexes that conv's input specs (IndexError in
    `_update_conv_input_qspec_map_after_replacement`). A node without an annotation is left float
    the same way, and the fusion skips it."""
    annotate = quantizer.annotate

    def annotate_then_drop(model):
        model = annotate(model)
        for node in model.graph.nodes:
            found = node.meta.get("quantization_annotation")
            if found is not None and not found.input_qspec_map and found.output_qspec is None:
                del node.meta["quantization_annotation"]
        return model

    quantizer.annotate = annotate_then_drop
    return quantizer
