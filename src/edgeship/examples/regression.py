"""A model that is not a classifier: disease progression from ten clinical measurements.

The data is scikit-learn's diabetes set (442 patients, 10 baseline variables, a quantitative
measure of disease progression one year later; Efron et al., 2004), shipped inside scikit-learn:
nothing is downloaded. Inputs and the target are standardised with the train split's statistics,
so a model that answers the train mean scores an mse of about 1.0 on the test split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits


def splits(seed: int = 0, test: int = 88, calibration: int = 44) -> Splits:
    """Features [10] float32 and the progression [1] float32, standardised; a seeded shuffle
    holds out `test` and `calibration` patients, the rest are trained on."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    order = np.random.default_rng(seed).permutation(len(data.target))
    x, y = data.data[order], data.target[order, None]
    parts = {"test": slice(0, test), "calibration": slice(test, test + calibration),
             "train": slice(test + calibration, None)}
    train_x, train_y = x[parts["train"]], y[parts["train"]]
    x = (x - train_x.mean(0)) / train_x.std(0)
    y = (y - train_y.mean()) / train_y.std()
    return Splits(**{name: TensorDataset(torch.from_numpy(x[rows]).float(), torch.from_numpy(y[rows]).float())
                     for name, rows in parts.items()})


def regressor(width: int = 64) -> nn.Module:
    """A three-layer perceptron with one output: the standardised progression."""
    return nn.Sequential(nn.Linear(10, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 1))
