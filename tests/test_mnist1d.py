"""mnist1d: seeded generation, shapes, label noise, a short training run and the CLI on it."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from sharpscope.data import builtin as data_builtin
from sharpscope.data import DATASETS, DataSpec, load_dataset, load_raw
from sharpscope.models import build_model, make_model_spec
from sharpscope.train import TrainConfig, train


def _fresh(**spec) -> object:
    data_builtin._MNIST1D_CACHE.clear()  # generate again, not from this process's cache
    return load_dataset(DataSpec(name="mnist1d", **spec))


def test_shapes_classes_and_default_sizes():
    assert "mnist1d" in DATASETS
    d = load_dataset("mnist1d")
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40) and d.input_shape == (40,)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.num_classes == 10
    assert sorted(d.y_train.unique().tolist()) == list(range(10)) == sorted(d.y_test.unique().tolist())
    assert torch.bincount(d.y_train).min() > 300  # balanced: 500 per class before the split
    assert abs(d.x_train.mean().item()) < 0.05 and abs(d.x_train.std().item() - 1) < 0.05  # standardized
    assert torch.equal(d.y_train, d.y_train_clean) and d.noise.n_flipped == 0


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b = _fresh(seed=3), _fresh(seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)
    c = _fresh(seed=4)
    assert not torch.equal(a.x_train, c.x_train)
    big = _fresh(seed=2**40)  # seeds beyond numpy's 32 bits are hashed, not rejected
    assert big.x_train.shape == (4000, 40) and not torch.equal(big.x_train, a.x_train)


def test_seed_42_is_the_packages_own_default_draw():
    from mnist1d.data import get_dataset_args, make_dataset
    state = np.random.get_state()
    ref = make_dataset(get_dataset_args())  # the package's defaults: seed 42
    np.random.set_state(state)
    raw = load_raw(DataSpec(name="mnist1d", seed=42))
    assert np.array_equal(raw.x_train, ref["x"]) and np.array_equal(raw.y_test, ref["y_test"])


def test_global_rngs_are_left_alone():
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    expected = (np.random.rand(), random.random(), torch.rand(1))
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    _fresh(seed=8)
    assert (np.random.rand(), random.random()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_cache_hands_out_copies():
    raw = load_raw(DataSpec(name="mnist1d", seed=5))
    raw.x_train[:] = 0
    assert load_raw(DataSpec(name="mnist1d", seed=5)).x_train.any()


def test_label_noise_subsets_and_ignored_root():
    clean = load_dataset(DataSpec(name="mnist1d", seed=1))
    noisy = load_dataset(DataSpec(name="mnist1d", seed=1, label_noise=0.25, noise_seed=7))
    assert torch.equal(noisy.y_train_clean, clean.y_train) and torch.equal(noisy.y_test, clean.y_test)
    assert torch.equal(noisy.x_train, clean.x_train)
    changed = (noisy.y_train != clean.y_train).float().mean().item()
    assert 0.25 * 0.85 < changed <= 0.25 and noisy.noise.n_flipped == int((noisy.y_train != clean.y_train).sum())
    sub = load_dataset(DataSpec(name="mnist1d", seed=1, n_train=500, n_test=200, root="/nowhere"))
    assert sub.x_train.shape == (500, 40) and sub.x_test.shape == (200, 40)


def test_models_fit_the_data():
    d = load_dataset("mnist1d")
    for name in ("mlp", "cnn1d"):
        model = build_model(make_model_spec(name, d.input_shape, d.num_classes))
        assert model(d.x_train[:5]).shape == (5, 10)
    with pytest.raises(Exception, match="image input"):
        make_model_spec("cnn", d.input_shape, d.num_classes)


def test_a_short_run_learns_well_above_chance(tmp_path):
    cfg = TrainConfig(optimizer="sgd", model="cnn1d", model_kwargs={"bn": True}, data="mnist1d", n_train=2000,
                      epochs=3, keep_snapshots=False, seed=0)
    result = train(cfg, tmp_path / "run")
    assert result.final["test_acc"] > 0.5  # chance 0.1; about 0.7 here


def test_cli_trains_mlp_and_cnn1d_and_analyses_run(tmp_path, cli):
    code, stdout, _ = cli(["train", "--help"])
    assert code == 0 and "mnist1d" in stdout and "cnn1d" in stdout
    for model in ("cnn1d", "mlp"):
        out = tmp_path / model
        code, stdout, err = cli(["train", "--data", "mnist1d", "--model", model, "--epochs", "2", "--n-train", "1000",
                                 "--no-progress", "--out", str(out)])
        assert code == 0, err
        assert "done: test acc" in stdout
    code, stdout, err = cli(["hessian", str(tmp_path / "cnn1d"), "--top-k", "2", "--samples", "200", "--json", "-"])
    assert code == 0, err
    result = json.loads(stdout[stdout.index("{"):])
    assert result["n_params"] == 5210 and len(result["eigenvalues"]["eigenvalues"]) == 2
