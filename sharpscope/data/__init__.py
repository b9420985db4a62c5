"""Data sets for sharpscope, all offline (nothing is ever downloaded): ``digits``, ``mnist1d``,
``synthetic``, files on disk (``npz``, ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``) and token
data (``text``, ``tokens``). :func:`load_dataset` reads the raw arrays, splits train / test with
``spec.seed`` where there is no official split, normalizes by train statistics, draws the seeded
``n_train`` / ``n_test`` subsets and adds label noise to the training labels, all randomness from
private ``torch.Generator`` objects.
"""

from .dataset import Dataset, loss_for_labels
from .fingerprints import FINGERPRINT_VERSION, fingerprint, fingerprint_differences  # noqa: F401
from .noise import LabelNoise, add_label_noise
from .pipeline import load_dataset, load_raw
from .readers import RawData, read_idx
from .spec import DATASETS, TOKEN_DATASETS, DataSpec, analysis_data_spec, spec_differences
from .text import BYTE_VOCAB, read_token_bin, text_tokens, token_batches, token_pairs

__all__ = ["DATASETS", "TOKEN_DATASETS", "DataSpec", "LabelNoise", "Dataset", "loss_for_labels", "RawData",
           "load_dataset", "load_raw", "analysis_data_spec", "add_label_noise", "read_idx", "fingerprint",
           "fingerprint_differences", "spec_differences", "BYTE_VOCAB", "text_tokens", "read_token_bin",
           "token_batches", "token_pairs"]
