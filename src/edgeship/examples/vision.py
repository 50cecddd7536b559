"""Any torchvision classification model by name, as a model factory:

    [model]
    factory = "edgeship.examples.vision:model"
    kwargs = { name = "mobilenet_v3_small", num_classes = 10, weights_path = "mnv3.pt" }

torchvision is an optional extra (`pip install -e '.[vision]'`). Nothing is downloaded: the
weights are a local state dict (`weights_path`), or none, and the load stage trains the model
(`model.train`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def model(name: str, num_classes: int = 1000, weights_path: str | None = None, **kwargs) -> nn.Module:
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - not installed, or built for another torch
        raise RuntimeError(f"torchvision is not usable here ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'}); install the "
                           f"'vision' extra with a torchvision built for torch {torch.__version__}") from None
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(f"unknown torchvision classification model {name!r}; known: {', '.join(known)}")
    built = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if weights_path is not None:
        built.load_state_dict(torch.load(Path(weights_path), map_location="cpu", weights_only=True))
    return built
