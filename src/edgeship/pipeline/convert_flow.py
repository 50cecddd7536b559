"""One flow's conversion, without the run's services: the candidate it ships (QAT's best state
converted, or the post-training model when QAT did not beat it beyond noise), the QAT history that
says which, and the shipped model's answers on the test split. The convert stage (static.py) runs
it on the driver, or with a cluster sends it to a Ray task (`converted_task`), which prepares the
float model again and loads the flow's state, as QAT's tasks do. What a task sends back holds no
int8 GraphModule (torch does not pickle one) but the Remake its exports convert again."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays
from edgeship.pipeline.post_training import Candidate, ConvertJob, against_post_training, candidate, post_training
from edgeship.pipeline.values import Calibrated
from edgeship.quantize.evaluate import reference_logits
from edgeship.quantize.flow import QuantFlow
from edgeship.report.schema import QatHistory


@dataclass(frozen=True)
class Conversion:
    shipped: Candidate
    history: QatHistory | None  # with QAT: its scores, and whether it or calibration alone shipped
    reference: np.ndarray  # the shipped model's answers on the test split


def converted(job: ConvertJob, float_model: nn.Module, c: Calibrated, split: Callable[[], Arrays]) -> Conversion:
    """`c` converted; when QAT ran, against the post-training model on `split` (the held-out
    split QAT was scored on)."""
    history = c.qat_history
    if history is not None and _holds_nan(c.prepared):
        # its fake-quant ranges hold NaN (the fake-quant model answered NaN: a LayerNorm's
        # variance rounding to zero): nothing of it converts
        shipped = post_training(job, float_model, c)
        history = history.model_copy(update={"shipped": "post-training", "diverged": history.diverged or NON_FINITE})
    elif history is not None:  # QAT ran: it ships only if it beats calibration alone, converted
        qat = candidate(job, c.flow, c.prepared, c.key, float_model=float_model, qat=job.qat)
        shipped, history = against_post_training(job, float_model, c, qat, split())
    else:
        shipped = candidate(job, c.flow, c.prepared, c.key, float_model=float_model, qat=job.qat)
    with shipped.flow.engine():
        reference = reference_logits(shipped.module, job.test, job.examples[0].shape[0])
    return Conversion(shipped, history, reference)


NON_FINITE = "QAT's fake-quant state holds NaN: its forward answered NaN from calibration on"


def _holds_nan(prepared: nn.Module) -> bool:
    """NaN, not Inf: an observer's min and max start at +-Inf, and stay there where it sees nothing."""
    return any(torch.isnan(v).any() for v in prepared.state_dict().values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())


def converted_task(shared: tuple[ConvertJob, nn.Module, Arrays | None], flow: QuantFlow, state: dict, key: str,
                   history: QatHistory | None) -> Conversion:
    """A Ray task: the flow's conversion from its (calibrated, fine-tuned) `state`; `shared`: the
    job (its scratch folders this machine's), the float model and the split QAT was scored on."""
    job, float_model, split = shared
    prepared = flow.restore(flow.capture(float_model, job.examples, qat=job.qat), job.examples, state, qat=job.qat)
    done = converted(job, float_model, Calibrated(flow, prepared, key, True, {}, qat_history=history), lambda: split)
    if done.shipped.remake is None:  # a model that travels: the runtime's exporter quantizes it
        return done
    return dataclasses.replace(done, shipped=dataclasses.replace(done.shipped, module=None))


@contextmanager
def system_scratch() -> Iterator[Path]:
    """A scratch folder in the system's temporary directory: a task's, away from the run folder."""
    with tempfile.TemporaryDirectory(prefix="edgeship-convert-") as folder:
        yield Path(folder)
