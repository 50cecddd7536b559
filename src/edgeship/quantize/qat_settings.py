"""What QAT runs with when the recipe leaves a knob out, and where each value came from.

A value the recipe sets is obeyed. The learning rate and optimizer left out are the probe's
(qat_probe.py) when the pipeline runs one, else the fallback below. Batch norm and observers
freeze late, as torchvision's QAT reference does (it freezes observers after 4 epochs and batch
norm after 3): half-way for batch norm, so the last epochs train against settled statistics; the
observers before the last epoch, so the weights adapt to the ranges that ship."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeship.recipe import QATSection

# torchvision's QAT reference fine-tunes at SGD lr 1e-4, momentum 0.9: a hundredth of training's
# rate. Adam's steps are normalised per weight, so its rate sits a decade lower.
FALLBACK_LR = {"sgd": 1e-4, "adam": 1e-5}
FALLBACK_OPTIMIZER = "sgd"

Source = Literal["recipe", "probe", "default"]


@dataclass(frozen=True)
class Chosen:
    value: float | int | str | None  # None: never (a freeze that does not happen)
    source: Source


def _freeze(value: int | str | None, auto: int) -> Chosen:
    if value is None:
        return Chosen(auto if auto >= 1 else None, "default")
    return Chosen(None if value == "never" else value, "recipe")


def choices(qat: QATSection, probed: tuple[str, float] | None = None) -> dict[str, Chosen]:
    """Every QAT knob edgeship may choose, with its value and source. `probed` is the probe's
    (optimizer, lr); it fills only what the recipe left out."""
    out: dict[str, Chosen] = {}
    if qat.optimizer is not None:
        out["optimizer"] = Chosen(qat.optimizer, "recipe")
    else:
        out["optimizer"] = Chosen(probed[0], "probe") if probed else Chosen(FALLBACK_OPTIMIZER, "default")
    if qat.lr is not None:
        out["lr"] = Chosen(qat.lr, "recipe")
    else:
        out["lr"] = (Chosen(probed[1], "probe") if probed
                     else Chosen(FALLBACK_LR[out["optimizer"].value], "default"))
    multi = qat.epochs >= 2  # a 1-epoch run freezes nothing: the hooks run at epoch starts
    out["freeze_bn_after_epochs"] = _freeze(qat.freeze_bn_after_epochs, qat.epochs // 2 if multi else 0)
    out["freeze_observers_after_epochs"] = _freeze(qat.freeze_observers_after_epochs,
                                                   qat.epochs - 1 if multi else 0)
    out["anchor"] = Chosen(qat.anchor, "recipe" if "anchor" in qat.model_fields_set else "default")
    return out


def resolved(qat: QATSection, chosen: dict[str, Chosen]) -> QATSection:
    """The section with every chosen value written in: what training (and distributed workers,
    which read it back from JSON) runs with."""
    freeze = {k: "never" if chosen[k].value is None else chosen[k].value
              for k in ("freeze_bn_after_epochs", "freeze_observers_after_epochs")}
    return qat.model_copy(update={"optimizer": chosen["optimizer"].value, "lr": chosen["lr"].value, **freeze})


def probe_needed(qat: QATSection) -> bool:
    return qat.lr is None
