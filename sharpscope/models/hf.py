"""Hugging Face ``transformers`` models built from a config, nothing downloaded: ``gpt``
(``GPT2LMHeadModel``, ``num_classes`` tokens) and ``bert`` (``BertForSequenceClassification``,
``num_classes`` labels) over sequences of T tokens (``input_shape`` (T,)), and ``vit``
(:class:`ViTClassifier`: a ``ViTForImageClassification`` giving class scores) over images (C, H, W)
or 1-D signals (L,) (an image of height 1, patches of 1 x p); weights from torch's
global RNG, dropout off and ``eager`` attention (every derivative exists) by default. ``transformers``
is imported only when one is built (else :class:`TransformersNotInstalled`). A new architecture is
one more builder ``(input_shape, num_classes, *, options)`` here and one registry entry.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from torch import Tensor, nn

from sharpscope.errors import ConfigError, ModelSpecError

from ._checks import check_input_shape, check_int, check_prob

__all__ = ["build_gpt", "build_bert", "build_vit", "ViTClassifier", "TransformersNotInstalled", "ATTENTION"]

ATTENTION = ("eager", "sdpa")
INSTALL = 'pip install "sharpscope[transformers]"'


class TransformersNotInstalled(ModelSpecError, ConfigError):
    """A Hugging Face model was asked for, but ``transformers`` is not installed."""


def _transformers() -> Any:
    """The ``transformers`` module, or :class:`TransformersNotInstalled` naming the extra."""
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise TransformersNotInstalled(f"this model is a Hugging Face transformers model, and transformers is not "
                                       f"installed ({err}); install it with {INSTALL}") from None


def _sequence_length(name: str, input_shape: Sequence[int]) -> int:
    """T of a token model's input shape (T,)."""
    shape = check_input_shape(input_shape)
    if len(shape) != 1:
        raise ModelSpecError(f"{name} takes token sequences (input shape (T,), T tokens), got input shape "
                             f"{tuple(shape)}")
    return shape[0]


def _sizes(n_layer: Any, n_embd: Any, n_head: Any, dropout: Any, attention: Any) -> tuple[int, int, int, float]:
    """The checked sizes, dropout and attention shared by every transformer builder."""
    layers, width, heads = check_int("n_layer", n_layer), check_int("n_embd", n_embd), check_int("n_head", n_head)
    if width % heads:
        raise ModelSpecError(f"n_embd ({width}) must be a multiple of n_head ({heads})")
    if attention not in ATTENTION:
        raise ModelSpecError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    return layers, width, heads, check_prob("dropout", dropout)


def build_gpt(input_shape: Sequence[int], num_classes: int, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
              dropout: float = 0.0, attention: str = "eager") -> nn.Module:
    """A ``GPT2LMHeadModel`` from a ``GPT2Config``: context ``n_positions`` = T of
    ``input_shape`` (T,), vocabulary ``num_classes``, MLP width 4 ``n_embd``, tied embeddings."""
    length = _sequence_length("gpt", input_shape)
    vocab = check_int("num_classes (the vocabulary size)", num_classes, 2)
    layers, width, heads, p = _sizes(n_layer, n_embd, n_head, dropout, attention)
    tf = _transformers()
    config = tf.GPT2Config(vocab_size=vocab, n_positions=length, n_embd=width, n_layer=layers, n_head=heads,
                           resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, bos_token_id=None, eos_token_id=None,
                           attn_implementation=attention)
    return tf.GPT2LMHeadModel(config)


def build_bert(input_shape: Sequence[int], num_classes: int, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
               vocab_size: int = 256, dropout: float = 0.0, attention: str = "eager") -> nn.Module:
    """A ``BertForSequenceClassification``: ``num_classes`` labels, ``max_position_embeddings`` = T,
    padding token 0, intermediate width 4 ``n_embd``."""
    length = _sequence_length("bert", input_shape)
    classes = check_int("num_classes", num_classes, 2)
    vocab = check_int("vocab_size", vocab_size, 2)
    layers, width, heads, p = _sizes(n_layer, n_embd, n_head, dropout, attention)
    tf = _transformers()
    config = tf.BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * width, max_position_embeddings=length, num_labels=classes,
                           hidden_dropout_prob=p, attention_probs_dropout_prob=p, pad_token_id=0,
                           attn_implementation=attention)
    return tf.BertForSequenceClassification(config)


class ViTClassifier(nn.Module):
    """A ``ViTForImageClassification``'s ``vit`` (a ``ViTModel`` without pooler) and ``classifier``,
    with their names and initialization, whose forward is sharpscope's image-model contract:
    ``x`` (N, C, H, W), or (N, L) for a signal, to the class scores (N, num_classes) that
    ``ViTForImageClassification`` returns as ``.logits`` (the classifier on the final
    layer-normed [CLS] token; Dosovitskiy et al., ICLR 2021). ``config`` is its ``ViTConfig``."""

    def __init__(self, model: nn.Module, signal: bool) -> None:
        super().__init__()
        self.config, self.vit, self.classifier, self.signal = model.config, model.vit, model.classifier, signal

    def forward(self, x: Tensor) -> Tensor:
        pixels = x.reshape(x.shape[0], 1, 1, x.shape[-1]) if self.signal else x
        return self.classifier(self.vit(pixel_values=pixels).last_hidden_state[:, 0])


def build_vit(input_shape: Sequence[int], num_classes: int, *, patch_size: int = 4, n_layer: int = 2,
              n_embd: int = 64, n_head: int = 2, dropout: float = 0.0, attention: str = "eager") -> ViTClassifier:
    """A :class:`ViTClassifier` from a ``ViTConfig``: images (C, H, W) cut into ``patch_size`` squares,
    or signals (L,) into runs of ``patch_size`` samples (an image (1, 1, L), patches 1 x p), which
    must tile the input; MLP width 4 ``n_embd``, ``num_classes`` labels. transformers' ``eager``
    attention takes its softmax (and so its derivatives) in float32 even in a float64 model:
    float64 curvature beyond float32 rounding needs ``attention="sdpa"`` (math kernel, exact)."""
    shape = check_input_shape(input_shape)
    patch = check_int("patch_size", patch_size)
    channels, size, patches = (1, (1, shape[0]), (1, patch)) if len(shape) == 1 else \
        (shape[0], tuple(shape[1:]), (patch, patch))
    if any(s % p for s, p in zip(size, patches)):
        what = f"signal length {shape[0]}" if len(shape) == 1 else f"image size {shape[1]}x{shape[2]}"
        raise ModelSpecError(f"vit: patch_size {patch} must divide the {what} (input shape {tuple(shape)})")
    classes = check_int("num_classes", num_classes, 2)
    layers, width, heads, p = _sizes(n_layer, n_embd, n_head, dropout, attention)
    tf = _transformers()
    config = tf.ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * width, hidden_dropout_prob=p, attention_probs_dropout_prob=p,
                          image_size=size, patch_size=patches, num_channels=channels, num_labels=classes,
                          attn_implementation=attention)
    return ViTClassifier(tf.ViTForImageClassification(config), signal=len(shape) == 1)
