"""ExecuTorch: torch.export, lowered to XNNPACK with its partitioner, saved as a .pte program.

Records which ops were delegated to XNNPACK and which stayed on the portable kernels."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeship.exporters.base import ExportedArtifact
from edgeship.targets import Target


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, examples)  # already in eval mode: flows leave it so
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    details = {"delegation": delegation(lowered.exported_program().graph_module)}
    path = workdir / f"{target.name}{target.suffix}"
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
