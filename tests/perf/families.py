"""Three model families that are not edgeship's examples (issue 10), each a data factory and a
model factory for a recipe: a ResNet-style CNN with residual adds and a MobileNetV3-style net
with squeeze-excitation and hardswish on scikit-learn's digits at 16x16, and a small pre-norm
transformer reading each digit's 8 rows as 8 tokens."""
import torch
from torch import nn

from edgeship.data import Splits
from edgeship.examples import digits, mobilenet


def images(size: int = 16) -> Splits:
    return mobilenet.splits(size=size)


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.skip(x))


def resnet(width: int = 16) -> nn.Module:
    """ResNet-style: basic blocks with residual adds."""
    w = width
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         Basic(w, w, 1), Basic(w, 2 * w, 2), Basic(2 * w, 4 * w, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(c, max(8, c // 4), 1), nn.ReLU(), nn.Conv2d(max(8, c // 4), c, 1),
                                nn.Hardsigmoid())

    def forward(self, x):
        return x * self.fc(self.pool(x))


class Bneck(nn.Module):
    def __init__(self, cin, exp, cout, stride, se):
        super().__init__()
        layers = [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), nn.Hardswish(),
                  nn.Conv2d(exp, exp, 3, stride, 1, groups=exp, bias=False), nn.BatchNorm2d(exp), nn.Hardswish()]
        if se:
            layers.append(SE(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v3() -> nn.Module:
    """MobileNetV3-style: inverted bottlenecks with squeeze-excitation and hardswish."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                         Bneck(16, 32, 16, 1, True), Bneck(16, 48, 24, 2, False), Bneck(24, 72, 24, 1, True),
                         Bneck(24, 96, 40, 2, True), nn.Conv2d(40, 128, 1), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.scale = (d // heads) ** -0.5

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.att(self.n1(x))
        return x + self.mlp(self.n2(x))


class SeqFormer(nn.Module):
    """A pre-norm transformer over each digit's 8 rows as 8 tokens."""

    def __init__(self, d=32, heads=4, depth=2):
        super().__init__()
        self.embed, self.pos = nn.Linear(8, d), nn.Parameter(torch.zeros(1, 8, d))
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):  # x: (batch, 1, 8, 8)
        h = self.blocks(self.embed(x.flatten(1, 2)) + self.pos)
        return self.head(self.norm(h).mean(dim=1))


def seqformer() -> nn.Module:
    return SeqFormer()


def rows() -> Splits:
    return digits.splits()
