"""Token sequences, nothing downloaded: :func:`text_tokens` (the standard library's ``pydoc_data``
help text as UTF-8 byte tokens; 90 % ``"train"``, the rest ``"val"``), :func:`read_token_bin`
(nanoGPT's uint16 ``train.bin`` / ``val.bin``), :func:`token_batches` (dict batches, ``labels =
input_ids``) and :func:`token_pairs` (nanoGPT's ``(x, y)`` pairs, the data of ``--data text / tokens``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sharpscope.checks import int_at_least, is_int
from sharpscope.errors import ConfigError, DataError

from ._common import stream_generator

__all__ = ["BYTE_VOCAB", "SPLITS", "text_tokens", "read_token_bin", "token_batches", "token_pairs", "token_arrays",
           "pair_count"]

BYTE_VOCAB = 256
SPLITS = ("train", "val")
_TRAIN_FRACTION = 0.9


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def text_tokens(split: str = "train") -> torch.Tensor:
    """The embedded corpus (module docstring) as int64 byte tokens of ``split``."""
    _check_split(split)
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions strip pydoc_data
        raise DataError(f"the embedded text corpus needs the standard library's pydoc_data ({err})") from None
    data = np.frombuffer("\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8"), dtype=np.uint8)
    cut = int(len(data) * _TRAIN_FRACTION)
    part = data[:cut] if split == "train" else data[cut:]
    return torch.from_numpy(part.astype(np.int64))


def read_token_bin(root: str | os.PathLike[str], split: str = "train") -> np.memmap:
    """``root/<split>.bin`` (nanoGPT: uint16 token ids) as a read-only memory map."""
    _check_split(split)
    path = Path(os.fspath(root)).expanduser() / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"token data: {path} not found (nanoGPT's prepare.py writes train.bin and val.bin of "
                        "uint16 token ids; put them in that folder)")
    return np.memmap(path, dtype=np.uint16, mode="r")


def token_batches(tokens: torch.Tensor | np.ndarray, block_size: int, batch_size: int = 8,
                  n_blocks: int | None = None, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Blocks [i T, (i + 1) T) of ``tokens`` as dict batches of at most ``batch_size`` blocks: all, in
    order, or ``n_blocks`` drawn without replacement by a generator seeded with ``seed``."""
    block_size = int_at_least("block_size", block_size, 2)
    batch_size = int_at_least("batch_size", batch_size, 1)
    total = len(tokens) // block_size
    if total == 0:
        raise DataError(f"{len(tokens)} tokens hold no block of {block_size}")
    if n_blocks is None:
        order = np.arange(total)
    elif not is_int(n_blocks) or not 1 <= n_blocks <= total:
        raise ConfigError(f"n_blocks must be an integer in 1..{total}, got {n_blocks!r}")
    else:
        order = torch.randperm(total, generator=stream_generator(seed, "token_blocks"))[:n_blocks].numpy()
    blocks = _windows(tokens, order, block_size, block_size)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b), "labels": b.clone()}
            for b in blocks.split(int(batch_size))]


def _windows(tokens: torch.Tensor | np.ndarray, starts: object, block_size: int, width: int) -> torch.Tensor:
    """int64 rows tokens[s T : s T + width] for the block indices s of ``starts`` (only those are read)."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] * block_size + np.arange(width)[None, :]
    if isinstance(tokens, torch.Tensor):
        return tokens[torch.from_numpy(offsets)].to(torch.int64)
    return torch.from_numpy(np.asarray(tokens[offsets]).astype(np.int64))


def pair_count(n_tokens: int, block_size: int) -> int:
    """How many ``(x, y)`` blocks ``n_tokens`` tokens hold: (n - 1) // T."""
    return max(0, (int(n_tokens) - 1) // int(block_size))


def token_pairs(tokens: torch.Tensor | np.ndarray, block_size: int,
                index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks i of ``tokens`` (all, or those of ``index``; only those are read) as int64 ``(x, y)``:
    x[i] = tokens[i T : (i + 1) T], y[i] = tokens[i T + 1 : (i + 1) T + 1] (nanoGPT's pairs)."""
    block_size = int_at_least("block_size", block_size, 1)
    total = pair_count(len(tokens), block_size)
    if total == 0:
        raise DataError(f"{len(tokens)} tokens hold no block of {block_size} and its next tokens")
    window = _windows(tokens, np.arange(total) if index is None else index, block_size, block_size + 1)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def token_arrays(name: str, root: str | os.PathLike[str] | None) -> tuple[object, object, int]:
    """Train and test tokens of ``name`` and its vocabulary: ``text`` (256 byte values) or ``tokens``
    (``root``'s ``train.bin`` / ``val.bin``, vocabulary max(token id) + 1)."""
    if name == "text":
        return text_tokens("train"), text_tokens("val"), BYTE_VOCAB
    if root is None:
        raise DataError("tokens: no root given; set --data-root to a folder holding train.bin and val.bin")
    train, val = read_token_bin(root, "train"), read_token_bin(root, "val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"tokens: {'train' if len(train) == 0 else 'val'}.bin in {root} is empty")
    vocab = int(max(int(train.max()), int(val.max()))) + 1
    return train, val, max(vocab, 2)
