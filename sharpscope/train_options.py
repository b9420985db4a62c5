"""Every training option declared once: its default, its command-line spelling and its help.

:class:`sharpscope.train.TrainConfig` (:func:`config_field`) and the training options of
``train``, ``compare`` and ``sweep`` (:mod:`sharpscope.cli._options`) are generated from
:data:`TRAIN_OPTIONS`. No torch here: building the command line stays cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainOption", "TRAIN_OPTIONS", "NOT_SWEPT", "config_field", "flag_of"]


@dataclass(frozen=True)
class TrainOption:
    """One TrainConfig field on the command line. ``kind``: ``float``, ``int``, ``str``, ``bool``
    (a flag), ``int?`` etc. (None allowed), ``p`` (a number or inf), ``pairs`` (repeatable
    KEY=VALUE into a dict), ``names`` (comma-separated). ``flags``: its spellings, the first its
    name (``--a/--no-a``: a switch). ``registry_help``: help written from the optimizer registry."""

    default: Any
    kind: str
    flags: tuple[str, ...]
    help: str = ""
    registry_help: str | None = None

    @property
    def factory(self) -> Any:
        """A default_factory for mutable defaults (dict, list), else None."""
        if isinstance(self.default, (dict, list)):
            value = self.default
            return lambda: type(value)(value)
        return None


def _o(default: Any, kind: str, *flags: str, help: str = "", registry_help: str | None = None) -> TrainOption:
    return TrainOption(default, kind, flags, help, registry_help)


TRAIN_OPTIONS: dict[str, TrainOption] = {
    "optimizer": _o("sam", "str", "--optimizer", "-o", registry_help="optimizer"),
    "model": _o("cnn", "str", "--model", help="mlp, cnn, cnn1d (1-D signals: mnist1d), resnet, wrn, aliases like "
                "resnet20 / wrn16-4; Hugging Face transformers built from a config (pip install "
                "\"sharpscope[transformers]\"): gpt (token data), bert, vit (images, or 1-D signals such as "
                "mnist1d); or a factory 'package.module:function'."),
    "model_kwargs": _o({}, "pairs", "--model-opt", help="Model option KEY=VALUE, repeatable "
                       "(e.g. --model-opt bn=true --model-opt width=32)."),
    "data": _o("digits", "str", "--data", help="digits, mnist1d, synthetic, npz, mnist, fashion-mnist, cifar10, "
               "cifar100; token data for language models (--model gpt): text (the standard library's pydoc help "
               "text as byte tokens, nothing downloaded) or tokens (nanoGPT's train.bin/val.bin in --data-root)."),
    "data_root": _o(None, "str?", "--data-root", help="Folder (mnist, cifar, tokens) or .npz file."),
    "label_noise": _o(0.0, "float", "--label-noise", help="Fraction of training labels replaced by uniformly "
                      "random classes, in [0, 1)."),
    "n_train": _o(None, "int?", "--n-train", help="Train on a seeded subset of this size (token data: of blocks)."),
    "block_size": _o(64, "int", "--block-size", help="Token data (text, tokens): the context length T; each example "
                     "is a block of T tokens and its T next tokens (nanoGPT's x, y). Other data ignore it."),
    "epochs": _o(40, "int", "--epochs", help="Number of epochs."),
    "batch_size": _o(64, "int", "--batch-size", "-b", help="Mini-batch size."),
    "grad_accum": _o(1, "int", "--grad-accum", help="Gradient accumulation: run each batch (each rank's slice) "
                     "as N micro-batches, both SAM passes accumulated and weighted by examples: the same step to "
                     "float rounding with about 1/N of the activation memory; batch norm normalizes each "
                     "micro-batch."),
    "lr": _o(0.1, "float", "--lr", help="Peak learning rate."),
    "momentum": _o(0.9, "float", "--momentum", help="SGD momentum (AdamW: beta1)."),
    "nesterov": _o(False, "bool", "--nesterov/--no-nesterov", help="Nesterov momentum."),
    "weight_decay": _o(5e-4, "float", "--weight-decay", "--wd", help="L2 weight decay (AdamW: decoupled)."),
    "base_optimizer": _o("sgd", "str", "--base-optimizer", help="What SAM and its variants wrap, the update step "
                         "from the gradient at w + e: sgd or adamw (SAM over AdamW; AdamW alone is --optimizer "
                         "adamw)."),
    "beta2": _o(0.999, "float", "--beta2", help="AdamW's second-moment decay (its beta1 is --momentum)."),
    "adam_eps": _o(1e-8, "float", "--adam-eps", help="AdamW's epsilon."),
    "schedule": _o("cosine", "str", "--schedule", help="cosine or constant."),
    "warmup_epochs": _o(0.0, "float", "--warmup", help="Linear warm-up length in epochs."),
    # None: the optimizer's default_rho (0.05; ASAM 0.5, Kwon et al.)
    "rho": _o(None, "float?", "--rho", registry_help="rho"),
    "p": _o(2.0, "p", "--p", help="Norm of the SAM neighbourhood: 2 or inf (any p > 1)."),
    "eta": _o(0.01, "float", "--eta", help="ASAM's offset in T_w = |w| + eta."),
    "asam_rule": _o("official", "str", "--asam-rule", help="ASAM: 'official' scales only parameters named weight "
                    "by |w| + eta, as SamsungLabs/ASAM does; 'all' scales every parameter."),
    "optimizer_options": _o({}, "pairs", "--optimizer-opt", registry_help="optimizer_opt"),
    "label_smoothing": _o(0.0, "float", "--label-smoothing", help="Label smoothing of the training loss (both SAM "
                          "passes), in [0, 1)."),
    "same_dropout_mask": _o(False, "bool", "--same-dropout-mask", help="The pass at w + e reuses the dropout masks "
                            "of the pass at w (the official SAM code's rule)."),
    "perturbation_weight_decay": _o(False, "bool", "--perturbation-weight-decay", help="Set e from the gradient of "
                                    "loss + L2 term (the official SAM code's rule)."),
    "m": _o(None, "int?", "--m", help="m-SAM: one perturbation per m examples of a batch."),
    "seed": _o(0, "int", "--seed", help="Seed of the initialisation, data split, order and label noise."),
    "checkpoint_every": _o(1, "int", "--checkpoint-every", help="Save every N epochs (and at the end)."),
    "keep_snapshots": _o(True, "bool", "--snapshots/--no-snapshots", help="Keep model snapshots per checkpoint in "
                         "OUT/checkpoints/."),
    "augment": _o(None, "bool?", "--augment/--no-augment", help="Random crop + flip (default: on for CIFAR only)."),
    "device": _o("cpu", "str", "--device", help="cpu, cuda, cuda:N or auto."),
    "second_order": _o(False, "bool", "--second-order", help="SAM with the full gradient (keeps "
                       "(d e_hat/dw)^T grad L; one extra double backward per step)."),
    "amp": _o(None, "str?", "--amp", help="Mixed precision: bf16 (autocast) or fp16 (autocast and a gradient "
              "scaler; inf/NaN steps are skipped)."),
    "channels_last": _o(False, "bool", "--channels-last", help="Image models and batches in channels-last memory "
                        "format (faster convolutions on many CPUs and GPUs)."),
    "compile": _o(False, "bool", "--compile", help="Run the training steps through torch.compile (tens of seconds "
                  "to compile; pays on long runs)."),
    "sync_perturbation": _o(False, "bool", "--sync-perturbation", help="Several ranks: one perturbation from the "
                            "all-reduced gradient (SAM over the global batch) instead of one per rank (m-SAM with "
                            "m = per-rank batch)."),
    "sync_bn": _o(False, "bool", "--sync-bn", help="Several ranks: batch-norm statistics over the global batch in "
                  "both passes (with --sync-perturbation: plain SAM over the global batch); without it each rank "
                  "normalizes with its own slice."),
    "track": _o([], "names", "--track", help="Track during training, comma-separated: gradcos, lambda_max, trace, "
                "m_sharpness (written to metrics.jsonl, plotted to tracking.png)."),
    "track_every": _o(1, "int", "--track-every", help="Track every N epochs."),
    "track_samples": _o(512, "int", "--track-samples", help="Seeded training subset used for tracking."),
}

# Where or how a run is done, not what is trained: never a sweep's grid axis (the seed is its own).
NOT_SWEPT = frozenset({"seed", "device", "data_root", "model_kwargs", "optimizer_options", "checkpoint_every",
                       "keep_snapshots", "track", "track_every", "track_samples", "sync_perturbation"})


def config_field(name: str) -> Any:
    """TrainConfig's dataclass field ``name``: its default, and the entry as ``metadata["cli"]``."""
    option = TRAIN_OPTIONS[name]
    if option.factory is not None:
        return dataclasses.field(default_factory=option.factory, metadata={"cli": option})
    return dataclasses.field(default=option.default, metadata={"cli": option})


def flag_of(name: str) -> str:
    """The command-line name of the training option ``name`` (``warmup_epochs`` -> ``--warmup``)."""
    return TRAIN_OPTIONS[name].flags[0].split("/")[0]
