"""Models built to try edgeship as a new user would, with default settings (`edgeship run
scripts/unseen_models/signal.toml`, `... denoise.toml`, `... unet.toml`): a 1-D conv net over
each digit as a 64-sample signal (GELU, GroupNorm, SiLU, a depthwise Conv1d), a denoising
autoencoder that upsamples with a 2x2 ConvTranspose2d (mse against the clean digit), a U-Net-like
classifier (a concatenated skip, nearest and bilinear upsampling, LeakyReLU, PReLU), a
hand-written ViT (`vit.toml`), a ResNet written as torchvision writes it (`tv_resnet.toml`), a
decoder with a grouped ConvTranspose2d (`grouped_decoder.toml`) and a 1-D upsampling net
(`deconv1d.toml`). Each found a defect, now tested in tests/test_pt2e_convert.py,
test_int8_share.py, test_fx_shape_floats.py, test_onnx_runtime_flow.py and test_transposed_bn.py.
Then a model returning (logits, aux) (`two_heads.toml`: tests/test_multi_output.py) and one with
dilated and grouped convs and a global max pool (`dilated.toml`: test_onnx_runtime_flow.py,
test_max_pool.py) found three more; a softmax output after nn.Upsample and Hardswish
(`softmax_head.toml`), a Conv1d front end into an LSTM (`conv_lstm.toml`) and a transposed conv and
its batch norm called from forward() (`custom_convt_bn.toml`) ran clean. A DenseNet-style net
(`densenet.toml`, calibration only) found torchao's batch-norm fold breaking the stem
convolution's other reader (tests/test_shared_conv_bn.py)."""
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


class TinyViT(nn.Module):
    """Patch embedding by a strided conv, a learned class token and positions, hand-written
    multi-head attention (matmul, softmax), LayerNorm, GELU MLP, pre-norm residuals."""
    def __init__(self, dim=32, heads=4, depth=2):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)          # 8x8 -> 4x4 = 16 tokens
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.ModuleList([ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t[:, 0]))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t):
        b, n, d = t.shape
        q, k, v = self.qkv(self.n1(t)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        t = t + self.proj((a @ v).transpose(1, 2).reshape(b, n, d))
        return t + self.mlp(self.n2(t))


class TVBasicBlock(nn.Module):
    """torchvision's BasicBlock, as written there: in-place ReLU, `out += identity`."""
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVResNet(nn.Module):
    """torchvision's ResNet stem and two stages, with its `x.view(x.size(0), -1)` before the head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.layer1 = TVBasicBlock(16, 16)
        self.layer2 = TVBasicBlock(16, 32, 2, nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32)))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


class GroupedDeconv(nn.Module):
    """Upsampling with a grouped transposed conv + BN (groups 4), then a classifier head."""
    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.head(self.up(self.down(x)))


class Deconv1d(nn.Module):
    """A 1-D signal net that upsamples with ConvTranspose1d (kernel 2 and 4)."""
    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv1d(1, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose1d(32, 16, 2, stride=2), nn.BatchNorm1d(16), nn.ReLU(),
                                nn.ConvTranspose1d(16, 16, 4, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.up(self.down(x.flatten(2))).mean(-1))


def vit():
    return TinyViT()


def tv_resnet():
    return TVResNet()


def grouped_decoder():
    return GroupedDeconv()


def deconv1d():
    return Deconv1d()


class SoftmaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.Hardswish(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        logits = self.fc(self.body(self.up(x)))
        return F.softmax(logits, dim=1)


def softmax_head():
    return SoftmaxHead()


class Dilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=2, dilation=2), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(self.c3(self.c2(self.c1(x))))
        x = torch.flatten(x, 1)
        return self.fc(x)


def dilated():
    return Dilated()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cls = nn.Linear(32, 10)
        self.aux = nn.Linear(32, 4)

    def forward(self, x):
        f = self.body(x)
        return self.cls(f), self.aux(f)


def two_heads():
    return TwoHeads()


class ConvLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                                   nn.Conv1d(16, 32, 3, stride=2, padding=1), nn.BatchNorm1d(32), nn.ReLU())
        self.lstm = nn.LSTM(32, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.front(x.flatten(2))          # (B, 32, 32)
        h = h.transpose(1, 2)                 # (B, T, C)
        out, _ = self.lstm(h)
        return self.head(out[:, -1])


def conv_lstm():
    return ConvLSTM()


class CustomConvTBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.bn = nn.BatchNorm2d(16)
        self.head_conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.down(x))
        x = F.relu(self.bn(self.up(x)))
        x = F.relu(self.head_conv(x))
        return self.fc(self.pool(x).flatten(1))


def custom_convt_bn():
    return CustomConvTBN()


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv1(F.relu(self.bn1(x)))
        new = self.conv2(F.relu(self.bn2(new)))
        return torch.cat([x, new], 1)


class DenseNet(nn.Module):
    def __init__(self, growth=8):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        c = 16
        layers = []
        for _ in range(4):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block = nn.Sequential(*layers)
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2))
        self.bn = nn.BatchNorm2d(c // 2)
        self.fc = nn.Linear(c // 2, 10)

    def forward(self, x):
        x = self.trans(self.block(self.stem(x)))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def densenet():
    return DenseNet()
