"""Verify stage: each artifact answers the whole test split in its own runtime, in a fresh
process (the same runner a device uses); accuracy and parity come from those answers alone."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeship.devices.profile import LocalTransport
from edgeship.devices.transports import Local, RunnerCall, RunnerFailed
from edgeship.exporters.base import ExportedArtifact
from edgeship.pipeline.evaluate import top1
from edgeship.report.schema import Parity
from edgeship.targets import Format, Target


class VerificationFailed(Exception):
    pass


def runner_engine_args(target: Target) -> list[str]:
    """TorchScript int8 needs its engine set before load: weights are packed for it."""
    if target.format is Format.TORCHSCRIPT and target.is_int8:
        return ["--engine", target.engine]
    return []


def predict(artifact: ExportedArtifact, target: Target, inputs_npz: Path, workdir: Path,
            batch_size: int, timeout_seconds: float = 600.0) -> np.ndarray:
    outputs = workdir / f"{target.name}-outputs.npz"
    args = ("--batch-size", str(batch_size), "--threads", str(os.cpu_count() or 1),
            *runner_engine_args(target))
    Local(LocalTransport(kind="local")).run(RunnerCall(
        "predict", artifact.path, artifact.files, inputs_npz, args, outputs, timeout_seconds))
    with np.load(outputs) as data:
        return data["output_0"]


def verify(artifact: ExportedArtifact, target: Target, inputs_npz: Path, labels: np.ndarray,
           reference: np.ndarray, reference_name: str, workdir: Path,
           batch_size: int) -> tuple[float, Parity]:
    try:
        scores = predict(artifact, target, inputs_npz, workdir, batch_size)
    except RunnerFailed as e:
        raise VerificationFailed(f"its runtime failed on the test split: {e}") from None
    if scores.shape != reference.shape:
        raise VerificationFailed(f"outputs of shape {scores.shape}; the reference gives {reference.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = int(bad.any(axis=tuple(range(1, scores.ndim))).sum())
        raise VerificationFailed(f"NaN or Inf in the outputs of {rows} of {len(scores)} test samples")
    parity = Parity(reference=reference_name,
                    top1_agreement=float((scores.argmax(1) == reference.argmax(1)).mean()),
                    max_abs_error=float(np.abs(scores - reference).max()))
    return top1(scores, labels), parity
