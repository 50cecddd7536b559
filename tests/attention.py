"""One causal attention head whose scores are masked in each way models write it: the model the
mask tests of every int8 target share."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKENS, VOCAB, WIDTH = 16, 24, 32


class Attention(nn.Module):
    """One causal attention head over embedded tokens; `mask` is how the scores are masked."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.mask = mask
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.out = nn.Linear(WIDTH, VOCAB)
        self.register_buffer("tril", torch.tril(torch.ones(TOKENS, TOKENS)))
        self.register_buffer("bias", torch.full((TOKENS, TOKENS), -1e9).triu(1))  # 0 where visible

    def forward(self, tokens):
        # one head, as (batch, heads, tokens, width): the ONNX exporter takes 4-D attention only
        q, k, v = self.qkv(self.embed(tokens)).unsqueeze(1).chunk(3, dim=-1)
        if self.mask == "sdpa":
            return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1))
        if self.mask == "sdpa_3d":  # (batch, tokens, width), which PyTorch takes too
            q, k, v = q.squeeze(1), k.squeeze(1), v.squeeze(1)
            return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True))
        scores = q @ k.transpose(-2, -1) / WIDTH ** 0.5
        if self.mask == "masked_fill":  # nanoGPT's non-flash path
            scores = scores.masked_fill(self.tril == 0, float("-inf"))
        elif self.mask == "additive":  # BERT's extended attention mask
            scores = scores + (1.0 - self.tril) * -10000.0
        elif self.mask == "buffer":  # an additive mask computed once
            scores = scores + self.bias
        elif self.mask == "scaled":  # a large constant that never reaches a Softmax: no mask
            scores = scores + (q * 1e5).mean() * 1e-5
        return self.out((F.softmax(scores, dim=-1) @ v).squeeze(1))
