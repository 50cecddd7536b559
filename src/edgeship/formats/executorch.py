"""ExecuTorch: torch.export, lowered to XNNPACK with its partitioner, saved as a .pte program.

Records which ops were delegated to XNNPACK and which stayed on the portable kernels."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeship.engines import captures_logged
from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.compute import measured_share
from edgeship.formats.executorch_compute import compute_ops
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.quantize.dynamic import pt2e_xnnpack_dynamic
from edgeship.quantize.max_pool import adaptive_max_pools_as_max_pools, adaptive_max_pools_decomposed
from edgeship.quantize.transposed_bn import transposed_bn_folded
from edgeship.targets import Format, Target


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module = transposed_bn_folded(module, grouped_only=True)  # ExecuTorch's own fold fails on those
    module = adaptive_max_pools_as_max_pools(module)  # not Core ATen: to_edge refuses them
    with captures_logged():
        program = torch.export.export(module, examples)  # already in eval mode: flows leave it so
    program = adaptive_max_pools_decomposed(program)  # what the module swap could not reach
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    details = {"delegation": delegation(lowered.exported_program().graph_module),
               "int8_share": measured_share(compute_ops, lowered.exported_program())}
    path = workdir / f"{target.name}{SPEC.suffix}"
    path.write_bytes(lowered.to_executorch().buffer)
    return ExportedArtifact(path, (path,), details)


def delegation(graph_module: torch.fx.GraphModule) -> dict:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    ops = info.delegation_by_operator
    return {
        "delegated_subgraphs": info.num_delegated_subgraphs,
        "delegated_nodes": info.num_delegated_nodes,
        "non_delegated_nodes": info.num_non_delegated_nodes,
        "delegated_ops": {op: b.delegated for op, b in sorted(ops.items()) if b.delegated},
        "non_delegated_ops": {op: b.non_delegated for op, b in sorted(ops.items()) if b.non_delegated},
    }


def quantize_dynamic(target: Target, model: nn.Module, examples: tuple,
                     float_layers: frozenset[str] = frozenset()) -> DynamicModel:
    return DynamicModel(pt2e_xnnpack_dynamic(model, examples, float_layers), export,
                        "dynamically quantized PyTorch model")


_CONV_5D = ("aten.convolution with 5-D input: XNNPACK does not delegate it and ExecuTorch's "
            "portable kernel takes only 3-D or 4-D input ('Expect input tensor to be 3-D or 4-D, "
            "but got, 5'); int8 fails earlier, at to_executorch: 'Missing out variants: "
            "{'quantized_decomposed::dequantize_per_channel'}'")

SPEC = FormatSpec(
    format=Format.EXECUTORCH, suffix=".pte", runtime_packages=("numpy", "torch", "executorch"),
    export=export, quantize_dynamic=quantize_dynamic,
    dynamic_layers="Linear, an LSTM's gates included (XNNPACK dynamic fully-connected)",
    dynamic_per_channel=True,  # XNNPACK's dynamic config, as ExecuTorch documents it
    unsupported_layers={
        nn.Conv3d: _CONV_5D,
        nn.MaxPool3d: "aten.max_pool3d_with_indices: no ExecuTorch kernel, XNNPACK does not "
                      "delegate it ('Missing operator: aten::max_pool3d_with_indices.out' when the "
                      "program loads)",
    })
