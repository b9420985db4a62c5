"""A GPT-2-style causal language model in a few lines, named as Hugging Face's GPT-2 names its
parameters (``transformer.wte`` / ``wpe``, ``transformer.h.N.ln_1`` / ``attn.c_attn`` /
``attn.c_proj`` / ``ln_2`` / ``mlp.c_fc`` / ``mlp.c_proj``, ``transformer.ln_f``, ``lm_head``),
its attention through ``F.scaled_dot_product_attention`` (causal): the tests of parameter
selection by name and of exact curvature through SDPA run on it without ``transformers``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.c_attn(x).split(c, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln_2, self.mlp = nn.LayerNorm(width), MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """Tokens (B, T) -> logits (B, T, vocab)."""

    def __init__(self, vocab: int = 11, width: int = 8, heads: int = 2, layers: int = 2, context: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, width), "wpe": nn.Embedding(context, width),
            "h": nn.ModuleList(Block(width, heads) for _ in range(layers)), "ln_f": nn.LayerNorm(width)})
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        tr = self.transformer
        x = tr["wte"](idx) + tr["wpe"](torch.arange(idx.shape[1], device=idx.device))
        for block in tr["h"]:
            x = block(x)
        return self.lm_head(tr["ln_f"](x))


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch (every sequence the same length)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def token_batches(n: int = 6, length: int = 6, batch: int = 4, vocab: int = 11, seed: int = 1) -> list:
    """(tokens, next tokens) batches of random sequences; the last batch is smaller."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, vocab, (n, length + 1), generator=g)
    return [(seq[i:i + batch, :-1], seq[i:i + batch, 1:]) for i in range(0, n, batch)]


class AttentionClassifier(nn.Module):
    """(B, features) -> class scores through one attention layer over the features as tokens
    (each token: its value times a learned vector plus a position embedding), attention by
    ``F.scaled_dot_product_attention``, mean pooling and a linear head. No LayerNorm, so that
    ``torch.func.hessian`` of its loss is right in torch 2.13 (see tests/test_param_selection.py)."""

    def __init__(self, features: int = 6, classes: int = 4, width: int = 4, heads: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.value = nn.Parameter(torch.randn(width) * 0.5)
        self.pos = nn.Parameter(torch.randn(features, width) * 0.5)
        self.attn = Attention(width, heads)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[..., None] * self.value + self.pos
        b, t, c = h.shape
        q, k, v = (z.view(b, t, self.attn.heads, c // self.attn.heads).transpose(1, 2)
                   for z in self.attn.c_attn(h).split(c, -1))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.head(torch.tanh(self.attn.c_proj(y.transpose(1, 2).reshape(b, t, c))).mean(1))


def attention_classifier(**kwargs: int) -> nn.Module:
    """Factory of :class:`AttentionClassifier` (a checkpoint's ``{"factory": "_tiny_gpt:attention_classifier"}``)."""
    return AttentionClassifier(**kwargs)


def frozen_attention_classifier(**kwargs: int) -> nn.Module:
    """:class:`AttentionClassifier` with its embedding (``value``, ``pos``) frozen, as a
    fine-tuned model's base: ``requires_grad=False``."""
    model = AttentionClassifier(**kwargs)
    model.value.requires_grad_(False)
    model.pos.requires_grad_(False)
    return model
