"""Models built to try edgeship as a new user would, with default settings (`edgeship run
scripts/unseen_models/signal.toml`, `... denoise.toml`, `... unet.toml`): a 1-D conv net over
each digit as a 64-sample signal (GELU, GroupNorm, SiLU, a depthwise Conv1d), a denoising
autoencoder that upsamples with a 2x2 ConvTranspose2d (mse against the clean digit), and a
U-Net-like classifier (a concatenated skip, nearest and bilinear upsampling, LeakyReLU, PReLU).
Each found a defect, now tested in tests/test_pt2e_convert.py and tests/test_int8_share.py."""
import torch
import torch.nn.functional as F
from torch import nn
from edgeship.examples import digits


class Signal1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2), nn.BatchNorm1d(32), nn.GELU(),
            nn.Conv1d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
            nn.Conv1d(64, 64, 3, padding=1, groups=64), nn.BatchNorm1d(64), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1))
        self.head = nn.Linear(64, 10)

    def forward(self, x):  # x: (batch, 1, 8, 8)
        return self.head(self.body(x.flatten(2)).flatten(1))


def signal1d():
    return Signal1d()


def splits():
    return digits.splits()


class Denoiser(nn.Module):
    """A convolutional autoencoder: a noisy digit in, the clean digit out (ConvTranspose2d up)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x):
        return self.up(self.down(x))


def denoiser():
    return Denoiser()


def noisy_splits():
    from torch.utils.data import TensorDataset
    from edgeship.data import Splits
    s = digits.splits()
    g = torch.Generator().manual_seed(0)

    def noisy(ds):
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return TensorDataset(x + 0.5 * torch.randn(x.shape, generator=g), x)
    return Splits(train=noisy(s.train), calibration=noisy(s.calibration), test=noisy(s.test))


class UNetLike(nn.Module):
    """An encoder-decoder classifier: a max-pooled branch upsampled twice (nearest, and bilinear
    at half weight) and concatenated with the full-resolution features."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.PReLU())
        self.dec = nn.Sequential(nn.Conv2d(48, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        a = self.enc1(x)
        b = self.enc2(a)
        up = (F.interpolate(b, scale_factor=2, mode="nearest")
              + 0.5 * F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False))
        return self.head(self.dec(torch.cat([a, up], dim=1)).mean(dim=(2, 3)))


def unet_like():
    return UNetLike()
