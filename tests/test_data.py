"""Tests for sharpscope.data: real-format tiny files, splits, normalization, label noise, errors."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope.data import (
    DATASETS,
    DataSpec,
    Dataset,
    LabelNoise,
    add_label_noise,
    load_dataset,
    load_raw,
    read_idx,
)
from sharpscope.errors import ConfigError, DataError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ------------------------------------------------------------------------------------------
# Writers for tiny real-format files
# ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as an IDX file (big-endian magic, big-endian uint32 dims, data)."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x00000800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_file(path: Path, data: bytes, gz: bool = False) -> Path:
    """Write bytes to ``path`` (or ``path.gz`` gzipped)."""
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_mnist(root: Path, gz: bool = False, n_train: int = 6, n_test: int = 4, h: int = 5, w: int = 4):
    """Write the four MNIST IDX files with deterministic pixel values; return the arrays."""
    rng = np.random.default_rng(123)
    x_train = rng.integers(0, 256, size=(n_train, h, w), dtype=np.uint8)
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    x_test = rng.integers(0, 256, size=(n_test, h, w), dtype=np.uint8)
    y_test = ((np.arange(n_test) * 3) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(MNIST_FILES, (x_train, y_train, x_test, y_test)):
        write_file(root / name, idx_bytes(arr), gz=gz)
    return x_train, y_train, x_test, y_test


def cifar_bytes(images: np.ndarray, labels: list[tuple[int, ...]]) -> bytes:
    """Encode CIFAR binary records: label byte(s) followed by 3072 channel-major pixel bytes."""
    out = b""
    for img, lab in zip(images, labels):
        out += bytes(lab) + np.asarray(img, dtype=np.uint8).tobytes()
    return out


def make_cifar10(folder: Path, per_batch: int = 2, n_test: int = 3):
    """Write data_batch_1..5.bin and test_batch.bin; return the arrays."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        y = [(b + i) % 10 for i in range(per_batch)]
        (folder / f"data_batch_{b}.bin").write_bytes(cifar_bytes(x, [(v,) for v in y]))
        xs.append(x)
        ys.extend(y)
    x_test = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    y_test = [9 - i for i in range(n_test)]
    (folder / "test_batch.bin").write_bytes(cifar_bytes(x_test, [(v,) for v in y_test]))
    return np.concatenate(xs), np.array(ys), x_test, np.array(y_test)


def make_cifar100(folder: Path, n_train: int = 4, n_test: int = 2):
    """Write train.bin and test.bin with (coarse, fine) label bytes; return arrays with fine labels."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    x_train = rng.integers(0, 256, size=(n_train, 3, 32, 32), dtype=np.uint8)
    fine_train = [99, 0, 57, 13][:n_train]
    x_test = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    fine_test = [42, 98][:n_test]
    (folder / "train.bin").write_bytes(cifar_bytes(x_train, [(f // 5, f) for f in fine_train]))
    (folder / "test.bin").write_bytes(cifar_bytes(x_test, [(f // 5, f) for f in fine_test]))
    return x_train, np.array(fine_train), x_test, np.array(fine_test)


class _Bomb:
    """Pickles to a call that creates a marker file, so unpickling would be visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ------------------------------------------------------------------------------------------
# digits / synthetic
# ------------------------------------------------------------------------------------------


def test_digits_shapes_split_and_standardization():
    ds = load_dataset(DataSpec(name="digits"))
    assert isinstance(ds, Dataset)
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == round(1797 * 0.2)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10
    assert abs(float(ds.x_train.mean())) < 1e-4
    assert abs(float(ds.x_train.std()) - 1.0) < 1e-3
    assert set(ds.y_train.tolist()) == set(range(10))
    assert torch.equal(ds.y_train, ds.y_train_clean) and ds.noise.n_flipped == 0
    # standardization = (x/16 - mean) / std with train statistics
    raw = load_raw(DataSpec(name="digits"))
    assert raw.x_train.shape == (1797, 1, 8, 8) and raw.x_train.max() == 16
    other = load_dataset(DataSpec(name="digits", test_fraction=0.5))
    assert len(other.x_test) == round(1797 * 0.5)


def test_digits_deterministic_and_seed_dependent():
    a = load_dataset(DataSpec(name="digits", seed=3))
    b = load_dataset(DataSpec(name="digits", seed=3))
    c = load_dataset(DataSpec(name="digits", seed=4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)


def test_synthetic_deterministic_and_learnable():
    from sklearn.linear_model import LogisticRegression

    spec = DataSpec(name="synthetic", seed=5)
    a, b = load_dataset(spec), load_dataset(spec)
    assert a.x_train.shape == (410, 16) and a.x_test.shape == (102, 16)
    assert a.num_classes == 4 and a.input_shape == (16,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    c = load_dataset(spec, seed=6)
    assert not torch.equal(a.x_train, c.x_train)
    acc = LogisticRegression(max_iter=2000).fit(a.x_train.numpy(), a.y_train.numpy()).score(
        a.x_test.numpy(), a.y_test.numpy()
    )
    assert 0.5 < acc < 1.0  # learnable, not trivially separable
    small = load_dataset(DataSpec(name="synthetic", synthetic_size=30, synthetic_classes=3, synthetic_features=5))
    assert small.x_train.shape[1] == 5 and small.num_classes == 3
    assert len(small.x_train) + len(small.x_test) == 30


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ConfigError, match="synthetic_classes"):
        load_dataset(DataSpec(name="synthetic", synthetic_classes=1))
    with pytest.raises(ConfigError, match="synthetic_size"):
        load_dataset(DataSpec(name="synthetic", synthetic_size=1))


# ------------------------------------------------------------------------------------------
# label noise
# ------------------------------------------------------------------------------------------


def test_label_noise_rate_zero_is_identity():
    labels = torch.arange(50) % 5
    noisy, info = add_label_noise(labels, 5, 0.0, seed=1)
    assert torch.equal(noisy, labels) and info.n_flipped == 0 and not info.flipped.any()
    assert isinstance(info, LabelNoise) and info.rate == 0.0 and info.seed == 1


def test_label_noise_fraction_changed():
    labels = torch.randint(0, 10, (10000,), generator=torch.Generator().manual_seed(0))
    noisy, info = add_label_noise(labels, 10, 0.4, seed=0)
    frac = info.n_flipped / len(labels)
    assert abs(frac - 0.4 * 9 / 10) < 0.02
    assert info.n_flipped == int((noisy != labels).sum())
    assert torch.equal(info.flipped, noisy != labels)
    assert noisy.min() >= 0 and noisy.max() < 10


@pytest.mark.parametrize("n, rate", [(10, 0.25), (11, 0.5), (7, 0.3), (1000, 0.123), (3, 0.9)])
def test_label_noise_redraws_exactly_round_rate_n(n, rate):
    # with a huge class count a redrawn label practically never equals the old one,
    # so the number of changed labels equals the number of redrawn ones
    labels = torch.zeros(n, dtype=torch.int64)
    _, info = add_label_noise(labels, 10**9, rate, seed=2)
    assert info.n_flipped == round(rate * n)


def test_label_noise_deterministic_and_no_global_rng():
    labels = torch.arange(200) % 10
    before = torch.get_rng_state()
    a, _ = add_label_noise(labels, 10, 0.3, seed=9)
    b, _ = add_label_noise(labels, 10, 0.3, seed=9)
    c, _ = add_label_noise(labels, 10, 0.3, seed=10)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(labels, torch.arange(200) % 10)  # input untouched


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_label_noise_rejects_bad_rate(rate):
    with pytest.raises(ConfigError, match="label"):
        add_label_noise(torch.zeros(5, dtype=torch.int64), 3, rate, seed=0)
    with pytest.raises(ConfigError, match="label_noise"):
        DataSpec(label_noise=rate).validate()


def test_label_noise_rejects_out_of_range_labels():
    with pytest.raises(DataError, match="0..2"):
        add_label_noise(torch.tensor([0, 1, 3]), 3, 0.5, seed=0)


def test_dataset_label_noise_train_only():
    clean = load_dataset(DataSpec(name="digits"))
    noisy = load_dataset(DataSpec(name="digits", label_noise=0.4, noise_seed=1))
    again = load_dataset(DataSpec(name="digits", label_noise=0.4, noise_seed=1))
    other = load_dataset(DataSpec(name="digits", label_noise=0.4, noise_seed=2))
    n = len(noisy.y_train)
    assert noisy.noise.n_flipped == int((noisy.y_train != noisy.y_train_clean).sum())
    assert torch.equal(noisy.noise.flipped, noisy.y_train != noisy.y_train_clean)
    assert abs(noisy.noise.n_flipped / n - 0.36) < 0.05
    assert torch.equal(noisy.y_train_clean, clean.y_train)
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_train, clean.x_train)
    assert torch.equal(noisy.y_train, again.y_train)
    assert not torch.equal(noisy.y_train, other.y_train)
    # the clean-label loader really yields clean labels
    ys = torch.cat([y for _, y in noisy.train_loader(batch_size=100, clean_labels=True)])
    assert torch.equal(ys, noisy.y_train_clean)


# ------------------------------------------------------------------------------------------
# DataSpec
# ------------------------------------------------------------------------------------------


def test_spec_round_trip_and_json():
    spec = DataSpec(name="cifar10", root="/data/c", seed=3, test_fraction=0.25, label_noise=0.2,
                    noise_seed=4, n_train=100, n_test=None, synthetic_size=64)
    d = spec.to_dict()
    assert all(v is None or type(v) in (str, int, float) for v in d.values())
    assert DataSpec.from_dict(json.loads(json.dumps(d))) == spec
    assert DataSpec.from_dict({}) == DataSpec()


def test_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(DataError, match="bogus"):
        DataSpec.from_dict({"name": "digits", "bogus": 1})
    with pytest.raises(DataError, match="bogus"):
        load_dataset(DataSpec(), bogus=1)


def test_spec_validate_errors():
    with pytest.raises(DataError, match="imagenet.*digits.*cifar100"):
        DataSpec(name="imagenet").validate()
    with pytest.raises(DataError, match="imagenet"):
        load_dataset(DataSpec(name="imagenet"))
    for tf in (0.0, 1.0, -0.5):
        with pytest.raises(ConfigError, match="test_fraction"):
            DataSpec(test_fraction=tf).validate()
    with pytest.raises(ConfigError, match="n_train"):
        DataSpec(n_train=0).validate()
    with pytest.raises(ConfigError, match="seed"):
        DataSpec.from_dict({"seed": "abc"})
    assert set(DATASETS) == {"digits", "mnist1d", "synthetic", "npz", "mnist", "fashion-mnist", "cifar10", "cifar100",
                             "text", "tokens"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion-mnist", "t10k-labels-idx1-ubyte"),
        ("cifar10", "data_batch_1.bin"),
        ("cifar100", "train.bin"),
        ("npz", "X"),
    ],
)
def test_file_datasets_need_root(name, expected):
    with pytest.raises(DataError, match=expected) as exc:
        DataSpec(name=name).validate()
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------------------------
# MNIST / IDX
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx_parsed_exactly(tmp_path, gz, name):
    x_train, y_train, x_test, y_test = make_mnist(tmp_path, gz=gz)
    spec = DataSpec(name=name, root=str(tmp_path))
    raw = load_raw(spec)
    assert raw.x_train.shape == (6, 1, 5, 4) and raw.x_test.shape == (4, 1, 5, 4)
    np.testing.assert_array_equal(raw.x_train[:, 0], x_train)
    np.testing.assert_array_equal(raw.x_test[:, 0], x_test)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.y_test, y_test)

    ds = load_dataset(spec)
    assert ds.num_classes == 10 and ds.input_shape == (1, 5, 4)
    px = x_train.astype(np.float64) / 255
    mean, std = px.mean(), px.std()
    np.testing.assert_allclose(ds.x_train.numpy()[:, 0], (px - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy()[:, 0], (x_test / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()


def test_read_idx_direct(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(tmp_path / "a-idx3-ubyte", idx_bytes(arr), gz=True)
    np.testing.assert_array_equal(read_idx(path, 0x00000803), arr)


def test_mnist_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist.*train-images-idx3-ubyte") as exc:
        load_dataset(DataSpec(name="mnist", root=str(missing)))
    assert str(missing) in str(exc.value) and "\n" not in str(exc.value)


def test_mnist_missing_one_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[\.gz\]") as exc:
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))
    assert str(tmp_path) in str(exc.value)


def test_mnist_bad_magic(tmp_path):
    make_mnist(tmp_path)
    labels = np.zeros(6, dtype=np.uint8)
    # a labels file where an images file is expected
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match="0x00000801.*expected 0x00000803"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))


def test_mnist_truncated(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-3]))
    with pytest.raises(DataError, match="truncated"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))
    path.write_bytes(gzip.compress(data[:10]))  # inside the header
    with pytest.raises(DataError, match="header"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))


def test_mnist_not_gzip(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))


def test_mnist_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError, match="6 images but .* 5 labels"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))


def test_mnist_label_out_of_range(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([0, 1, 2, 10], dtype=np.uint8)))
    with pytest.raises(DataError, match="0..9"):
        load_dataset(DataSpec(name="mnist", root=str(tmp_path)))


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("subfolder", [False, True])
def test_cifar10_parsed_exactly(tmp_path, subfolder):
    folder = tmp_path / "cifar-10-batches-bin" if subfolder else tmp_path
    x_train, y_train, x_test, y_test = make_cifar10(folder)
    spec = DataSpec(name="cifar10", root=str(tmp_path))
    raw = load_raw(spec)
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    np.testing.assert_array_equal(raw.y_test, y_test)

    ds = load_dataset(spec)
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.num_classes == 10
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    px = x_train.astype(np.float64) / 255
    mean = px.mean(axis=(0, 2, 3), keepdims=True)
    std = px.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(ds.x_train.numpy(), (px - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (x_test / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)


@pytest.mark.parametrize("subfolder", [False, True])
def test_cifar100_uses_fine_labels(tmp_path, subfolder):
    folder = tmp_path / "cifar-100-binary" if subfolder else tmp_path
    x_train, fine_train, x_test, fine_test = make_cifar100(folder)
    raw = load_raw(DataSpec(name="cifar100", root=str(tmp_path)))
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    ds = load_dataset(DataSpec(name="cifar100", root=str(tmp_path)))
    assert ds.num_classes == 100
    assert ds.y_train.tolist() == fine_train.tolist() and ds.y_test.tolist() == fine_test.tolist()


def test_cifar_wrong_size(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="data_batch_3.bin.*3073"):
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))
    make_cifar100(tmp_path / "c100")
    (tmp_path / "c100" / "test.bin").write_bytes(b"\x00" * 3073)
    with pytest.raises(DataError, match="test.bin.*3074"):
        load_dataset(DataSpec(name="cifar100", root=str(tmp_path / "c100")))


def test_cifar_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*data_batch_1.bin.*test_batch.bin"):
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path / "none")))
    make_cifar10(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match="no data_batch_5.bin") as exc:
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))
    assert "cifar-10-batches-bin" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="train.bin, test.bin"):
        load_dataset(DataSpec(name="cifar100", root=str(tmp_path)))


def test_cifar_label_out_of_range(tmp_path):
    make_cifar10(tmp_path)
    img = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(cifar_bytes(img, [(12,)]))
    with pytest.raises(DataError, match="0..9"):
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))


# ------------------------------------------------------------------------------------------
# npz
# ------------------------------------------------------------------------------------------


def test_npz_vectors_are_split(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.arange(20) % 3
    path = tmp_path / "d.npz"
    np.savez(path, X=x, y=y)
    ds = load_dataset(DataSpec(name="npz", root=str(path), test_fraction=0.25))
    assert ds.x_train.shape == (15, 2) and ds.x_test.shape == (5, 2)
    assert ds.num_classes == 3 and ds.x_train.dtype == torch.float32
    # rows are kept intact (values unchanged) and labels follow their rows
    allx = torch.cat([ds.x_train, ds.x_test]).numpy()
    ally = torch.cat([ds.y_train, ds.y_test]).numpy()
    order = np.argsort(allx[:, 0])
    np.testing.assert_array_equal(allx[order], x.astype(np.float32))
    np.testing.assert_array_equal(ally[order], y)


def test_npz_images_with_official_test(tmp_path):
    x = np.random.default_rng(0).random((6, 5, 4))
    xt = np.random.default_rng(1).random((3, 5, 4))
    path = tmp_path / "img.npz"
    np.savez(path, X=x, y=np.array([0, 1, 2, 3, 4, 0]), X_test=xt, y_test=np.array([1, 1, 6]))
    ds = load_dataset(DataSpec(name="npz", root=str(path)))
    assert ds.input_shape == (1, 5, 4) and len(ds.x_train) == 6 and len(ds.x_test) == 3
    assert ds.num_classes == 7
    np.testing.assert_allclose(ds.x_train.numpy()[:, 0], x, rtol=1e-6)
    np.testing.assert_allclose(ds.x_test.numpy()[:, 0], xt, rtol=1e-6)
    np.savez(path, X=np.zeros((4, 2, 3, 3)), y=np.zeros(4, dtype=np.int64))
    assert load_dataset(DataSpec(name="npz", root=str(path))).input_shape == (2, 3, 3)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"X": np.zeros((4, 2))}, "no y"),
        ({"y": np.zeros(4, dtype=int)}, "no X"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)}, r"shape \(3,\).*\(4,\)"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(4)}, "float64.*integer"),
        ({"X": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "negative"),
        ({"X": np.zeros(4), "y": np.zeros(4, dtype=int)}, r"\(N, D\)"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "X_test": np.zeros((2, 2))}, "X_test and y_test"),
        (
            {
                "X": np.zeros((4, 2)),
                "y": np.zeros(4, dtype=int),
                "X_test": np.zeros((2, 3)),
                "y_test": np.zeros(2, dtype=int),
            },
            "X_test",
        ),
        ({"X": np.array([[np.nan, 1.0]] * 4), "y": np.zeros(4, dtype=int)}, "NaN"),
    ],
)
def test_npz_malformed(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as exc:
        load_dataset(DataSpec(name="npz", root=str(path)))
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_npz_object_array_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "obj.npz"
    x = np.empty(2, dtype=object)
    x[0], x[1] = _Bomb(marker), _Bomb(marker)
    np.savez(path, X=x, y=np.zeros(2, dtype=int))  # savez pickles object arrays
    with pytest.raises(DataError, match="unpickling") as exc:
        load_dataset(DataSpec(name="npz", root=str(path)))
    assert not marker.exists()
    assert "X" in str(exc.value)


def test_npz_missing_or_not_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist.*X.*y") as exc:
        load_dataset(DataSpec(name="npz", root=str(tmp_path / "none.npz")))
    assert "none.npz" in str(exc.value)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(DataError, match="not an .npz"):
        load_dataset(DataSpec(name="npz", root=str(npy)))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage bytes")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(DataSpec(name="npz", root=str(junk)))


# ------------------------------------------------------------------------------------------
# subsets and loaders
# ------------------------------------------------------------------------------------------


def test_n_train_n_test_subsets():
    full = load_dataset(DataSpec(name="digits"))
    sub = load_dataset(DataSpec(name="digits", n_train=100, n_test=50))
    again = load_dataset(DataSpec(name="digits", n_train=100, n_test=50))
    assert sub.x_train.shape == (100, 1, 8, 8) and sub.x_test.shape == (50, 1, 8, 8)
    assert torch.equal(sub.x_train, again.x_train) and torch.equal(sub.y_test, again.y_test)
    # each subset row is a row of the full split (same normalization)
    full_rows = {tuple(r.tolist()) for r in full.x_train.reshape(len(full.x_train), -1)}
    assert all(tuple(r.tolist()) in full_rows for r in sub.x_train.reshape(100, -1))
    noisy = load_dataset(DataSpec(name="digits", n_train=100, label_noise=0.5))
    assert noisy.noise.flipped.shape == (100,)
    with pytest.raises(ConfigError, match="n_train"):
        load_dataset(DataSpec(name="digits", n_train=5000))
    with pytest.raises(ConfigError, match="n_test"):
        load_dataset(DataSpec(name="digits", n_test=1000))


def test_loaders_cover_every_example_once():
    ds = load_dataset(DataSpec(name="synthetic", label_noise=0.2))
    n = len(ds.x_train)
    for shuffle in (False, True):
        batches = list(ds.train_loader(batch_size=64, shuffle=shuffle, seed=1))
        assert all(len(x) <= 64 for x, _ in batches)
        xs = torch.cat([x for x, _ in batches])
        ys = torch.cat([y for _, y in batches])
        assert len(xs) == n
        order = [int(torch.nonzero((ds.x_train == row).all(dim=1))[0]) for row in xs]
        assert sorted(order) == list(range(n))
        assert torch.equal(ys, ds.y_train[order])
    a = torch.cat([x for x, _ in ds.train_loader(batch_size=64, shuffle=True, seed=1)])
    b = torch.cat([x for x, _ in ds.train_loader(batch_size=64, shuffle=True, seed=1)])
    assert torch.equal(a, b)
    xt = torch.cat([x for x, _ in ds.test_loader(batch_size=7)])
    yt = torch.cat([y for _, y in ds.test_loader(batch_size=7)])
    assert torch.equal(xt, ds.x_test) and torch.equal(yt, ds.y_test)
    with pytest.raises(ConfigError, match="batch_size"):
        ds.train_loader(batch_size=0)


def test_dataset_subset_method():
    ds = load_dataset(DataSpec(name="synthetic", label_noise=0.3))
    x, y = ds.subset("train", 20, seed=3)
    x2, y2 = ds.subset("train", 20, seed=3)
    assert x.shape == (20, 16) and torch.equal(x, x2) and torch.equal(y, y2)
    idx = [int(torch.nonzero((ds.x_train == row).all(dim=1))[0]) for row in x]
    assert len(set(idx)) == 20 and torch.equal(y, ds.y_train[idx])  # noisy training labels
    xt, yt = ds.subset("test", None)
    assert torch.equal(xt, ds.x_test) and torch.equal(yt, ds.y_test)
    with pytest.raises(ConfigError, match="split"):
        ds.subset("valid", 5)
    with pytest.raises(ConfigError, match="subset size"):
        ds.subset("test", len(ds.x_test) + 1)


def test_load_dataset_accepts_name_and_dict():
    a = load_dataset("synthetic", synthetic_size=40)
    b = load_dataset({"name": "synthetic", "synthetic_size": 40})
    assert torch.equal(a.x_train, b.x_train) and a.spec == b.spec
    assert math.isclose(a.spec.test_fraction, 0.2)
