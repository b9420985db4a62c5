"""Data sets for sharpscope: loading, splitting, normalization and symmetric label noise.

Everything here is offline: ``digits`` is bundled with scikit-learn, ``mnist1d`` and ``synthetic``
are generated,
and ``npz`` / ``mnist`` / ``fashion-mnist`` / ``cifar10`` / ``cifar100`` are read from files the
user has already put on disk (raw IDX files, the official CIFAR "binary version", or an ``.npz``
archive).  Nothing is ever downloaded.

The pipeline of :func:`load_dataset` is

1. read the raw arrays (:func:`load_raw`; ``uint8`` pixels for image files),
2. split into train / test with ``spec.seed`` when the data set has no official split,
3. compute normalization statistics on the (whole) train part,
4. take the optional seeded ``n_train`` / ``n_test`` subsets,
5. convert to ``float32`` and normalize,
6. apply symmetric label noise to the training labels only (:func:`add_label_noise`).

All randomness comes from private ``torch.Generator`` objects; the global RNGs are never used.

The package's modules: :mod:`~sharpscope.data.spec` (:class:`DataSpec`),
:mod:`~sharpscope.data.readers` (files on disk), :mod:`~sharpscope.data.builtin` (``digits``,
``mnist1d``, ``synthetic``), :mod:`~sharpscope.data.noise` (label noise),
:mod:`~sharpscope.data.dataset` (:class:`Dataset`), :mod:`~sharpscope.data.fingerprints` and
:mod:`~sharpscope.data.pipeline` (:func:`load_dataset`); :mod:`~sharpscope.data.text` (token
sequences for the token losses: the standard library's pydoc help text as byte tokens, nanoGPT's
``train.bin`` / ``val.bin``; ``--data text`` / ``--data tokens`` as data sets of token blocks).
Every public name is importable from ``sharpscope.data`` itself.
"""

from .dataset import Dataset, loss_for_labels
from .fingerprints import FINGERPRINT_VERSION, fingerprint, fingerprint_differences  # noqa: F401
from .noise import LabelNoise, add_label_noise
from .pipeline import load_dataset, load_raw
from .readers import RawData, read_idx
from .spec import DATASETS, TOKEN_DATASETS, DataSpec, analysis_data_spec, spec_differences
from .text import BYTE_VOCAB, read_token_bin, text_tokens, token_batches, token_pairs

__all__ = [
    "DATASETS",
    "TOKEN_DATASETS",
    "DataSpec",
    "LabelNoise",
    "Dataset",
    "loss_for_labels",
    "RawData",
    "load_dataset",
    "load_raw",
    "analysis_data_spec",
    "add_label_noise",
    "read_idx",
    "fingerprint",
    "fingerprint_differences",
    "spec_differences",
    "BYTE_VOCAB",
    "text_tokens",
    "read_token_bin",
    "token_batches",
    "token_pairs",
]
