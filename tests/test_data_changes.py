"""Changed data is caught, never measured silently (issue 23, item 4).

Checkpoints record a fingerprint of the training split; data that no longer fits the model
is refused (one line, exit code 2) by every analysis verb and by ``train --resume``; data that
still fits but differs from the fingerprint is analysed with a warning naming what differs;
``interpolate`` refuses two runs trained on different splits unless ``--use-a-data``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sharpscope.checkpoint import (check_data_fits, checkpoint_data, load_checkpoint, read_checkpoint,
                                   save_checkpoint, training_data_differences)
from sharpscope.data import DataSpec, fingerprint, fingerprint_differences, load_dataset, spec_differences
from sharpscope.errors import CheckpointError, DataChangedWarning, DataMismatchError
from sharpscope.models import build_model, make_model_spec
from sharpscope.train import TrainConfig, train


def _write_npz(path: Path, n: int = 120, classes: int = 3, features: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, X=rng.normal(size=(n, features)).astype(np.float32), y=np.arange(n) % classes)
    return path


def _train(out: Path, npz: Path, **kw) -> Path:
    config = dict(optimizer="sgd", model="mlp", model_kwargs={"hidden": [8]}, data="npz", data_root=str(npz),
                  epochs=1, batch_size=32, keep_snapshots=False)
    train(TrainConfig(**{**config, **kw}), out)
    return out


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sharpscope: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- the fingerprint ---------------------------------------------------------------------------

def test_fingerprint_is_the_sha256_of_the_float32_inputs_and_int64_labels():
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 2, 1, 0, 2, 2], dtype=torch.int32)
    fp = fingerprint(x, y, num_classes=4)
    assert fp["n_examples"] == 7 and fp["input_shape"] == [2, 3] and fp["num_classes"] == 4
    assert fp["class_counts"] == [2, 1, 4, 0]
    assert fp["inputs_sha256"] == hashlib.sha256(x.float().numpy().tobytes()).hexdigest()
    assert fp["labels_sha256"] == hashlib.sha256(np.asarray(y, dtype=np.int64).tobytes()).hexdigest()
    assert fingerprint(x.clone(), y.clone(), 4) == fp


def test_fingerprint_differences_name_each_change():
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    base = fingerprint(x, y)
    assert fingerprint_differences(base, base) == []
    more = fingerprint(torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 3, 3]))
    diffs = " | ".join(fingerprint_differences(base, more))
    assert "6 examples recorded, 8 now" in diffs and "3 classes recorded, 4 now" in diffs
    assert "SHA-256" not in diffs  # implied by the sizes: not said again
    moved = fingerprint(x + 1, y)
    assert fingerprint_differences(base, moved) == [
        f"the inputs differ (SHA-256 {base['inputs_sha256'][:12]} recorded, {moved['inputs_sha256'][:12]} now)"]
    relabelled = fingerprint(x, torch.tensor([1, 0, 2, 0, 1, 2]))  # same counts, other labels
    assert [d.split(" (")[0] for d in fingerprint_differences(base, relabelled)] == ["the labels differ"]
    recounted = fingerprint(x, torch.tensor([0, 0, 2, 0, 1, 2]))
    assert fingerprint_differences(base, recounted)[0].startswith("class 0: 2 examples recorded, 3 now")
    shaped = fingerprint(torch.randn(6, 4), y)
    assert fingerprint_differences(base, shaped) == ["input shape (3,) recorded, (4,) now"]


def test_dataset_fingerprint_sees_label_noise_and_split_seed():
    base = load_dataset("synthetic", synthetic_size=64)
    noisy = load_dataset("synthetic", synthetic_size=64, label_noise=0.5)
    other = load_dataset("synthetic", synthetic_size=64, seed=1)
    assert base.fingerprint() == load_dataset("synthetic", synthetic_size=64).fingerprint()
    assert base.fingerprint()["inputs_sha256"] == noisy.fingerprint()["inputs_sha256"]
    assert base.fingerprint()["labels_sha256"] != noisy.fingerprint()["labels_sha256"]
    assert base.fingerprint()["inputs_sha256"] != other.fingerprint()["inputs_sha256"]


def test_spec_differences_ignore_fields_that_choose_nothing():
    a = DataSpec(name="digits").to_dict()
    assert spec_differences(a, {**a, "noise_seed": 3, "n_test": 5}) == []  # no label noise; n_test: test split only
    assert spec_differences(a, {**a, "seed": 1}, names=("for A", "for B")) == ["seed 0 for A, 1 for B"]
    assert spec_differences({**a, "label_noise": 0.2}, {**a, "label_noise": 0.2, "noise_seed": 1}) == \
        ["noise_seed 0 in a, 1 in b"]
    assert spec_differences({**a, "root": "x"}, {**a, "root": "y"}, root=False) == []


# --- checkpoints record it ---------------------------------------------------------------------

def _mlp(data):
    return build_model(make_model_spec("mlp", data.input_shape, data.num_classes, hidden=[8]))


def test_save_checkpoint_records_the_fingerprint_of_the_data_given(tmp_path):
    data = load_dataset("synthetic", synthetic_size=64)
    model = _mlp(data)
    spec = make_model_spec("mlp", data.input_shape, data.num_classes, hidden=[8])
    save_checkpoint(tmp_path / "a.pt", model, model_spec=spec, data=data)
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt.data_fingerprint == data.fingerprint() and ckpt.data_spec == data.spec.to_dict()
    save_checkpoint(tmp_path / "b.pt", model, model_spec=spec, data=(data.x_train, data.y_train))
    assert load_checkpoint(tmp_path / "b.pt").data_fingerprint == data.fingerprint() | {"num_classes": 4}
    save_checkpoint(tmp_path / "c.pt", model, model_spec=spec)  # no data: no fingerprint, as before
    assert load_checkpoint(tmp_path / "c.pt").data_fingerprint is None
    with pytest.raises(CheckpointError, match="Dataset or an"):
        save_checkpoint(tmp_path / "d.pt", model, model_spec=spec, data=[1, 2, 3])


def test_trainer_records_the_fingerprint_in_checkpoint_and_snapshots(tmp_path):
    npz = _write_npz(tmp_path / "d.npz")
    _train(tmp_path / "run", npz, keep_snapshots=True)
    expected = load_dataset(DataSpec(name="npz", root=str(npz))).fingerprint()
    assert read_checkpoint(tmp_path / "run")["data_fingerprint"] == expected
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_0001.pt")["data_fingerprint"] == expected


def test_info_shows_the_recorded_training_split(tmp_path, cli):
    npz = _write_npz(tmp_path / "d.npz")
    run = _train(tmp_path / "run", npz)
    code, out, err = cli(["info", str(run), "--json", "-"])
    assert code == 0, err
    assert json.loads(out)["data_fingerprint"] == read_checkpoint(run)["data_fingerprint"]
    code, out, err = cli(["info", str(run)])
    assert code == 0 and "96 examples of shape (6,), 3 classes" in out


# --- data that does not fit: one line, exit code 2 ---------------------------------------------

@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A run trained on 3 classes whose npz now holds 5."""
    root = tmp_path_factory.mktemp("grown")
    npz = _write_npz(root / "d.npz", classes=3)
    _train(root / "run", npz)
    _write_npz(npz, classes=5)
    return root / "run"


@pytest.mark.parametrize("verb", [["hessian", "--top-k", "1"], ["gradcos"], ["sharpness", "--m", "4"],
                                  ["surface", "--grid", "-1:1:3"], ["interpolate", "SAME", "--grid", "0:1:2"]])
def test_analyses_refuse_data_with_more_classes_than_the_model(grown, verb, cli, tmp_path):
    args = [verb[0], str(grown), *[str(grown) if a == "SAME" else a for a in verb[1:]]]
    if verb[0] in ("surface", "interpolate"):
        args += ["--out", str(tmp_path)]
    quiet = ["--no-progress"] if verb[0] != "gradcos" else []
    code, _, err = cli([*args, "--json", str(tmp_path / "r.json"), *quiet])
    line = _one_line_error(code, err)
    assert "does not fit the model: it has labels up to 4 (5 classes) but the model scores 3 classes" in line
    assert "3 classes recorded, 5 now" in line
    assert not (tmp_path / "r.json").exists()


def test_resume_refuses_data_with_more_classes(grown, cli):
    before = (grown / "checkpoint.pt").read_bytes()
    code, _, err = cli(["train", "--resume", "--out", str(grown), "--no-progress"])
    assert "labels up to 4 (5 classes) but the model scores 3 classes" in _one_line_error(code, err)
    assert (grown / "checkpoint.pt").read_bytes() == before


def test_analyses_refuse_inputs_the_model_rejects(tmp_path, cli):
    npz = _write_npz(tmp_path / "d.npz", features=6)
    run = _train(tmp_path / "run", npz)
    _write_npz(npz, features=5)
    code, _, err = cli(["gradcos", str(run)])
    line = _one_line_error(code, err)
    assert "rejects inputs of shape (5,)" in line and "input shape (6,) recorded, (5,) now" in line
    with pytest.raises(DataMismatchError, match="rejects inputs"):
        checkpoint_data(load_checkpoint(run))


def test_check_data_fits_needs_class_scores():
    data = load_dataset("synthetic", synthetic_size=32)
    assert check_data_fits(_mlp(data), data) == 4
    with pytest.raises(DataMismatchError, match=r"give outputs \(8,\)"):
        check_data_fits(torch.nn.Sequential(torch.nn.Linear(16, 1), torch.nn.Flatten(0)), data)


# --- data that fits but changed: a warning naming what differs ---------------------------------

def test_changed_but_fitting_data_warns_naming_what_differs(tmp_path, cli):
    npz = _write_npz(tmp_path / "d.npz")
    run = _train(tmp_path / "run", npz)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = cli(["gradcos", str(run), "--json", "-"])
    assert code == 0 and not [w for w in caught if issubclass(w.category, DataChangedWarning)]  # unchanged: nothing
    _write_npz(npz, seed=1)  # same size, shape and classes, other inputs
    proc = subprocess.run([sys.executable, "-m", "sharpscope", "gradcos", str(run), "--json", "-"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warned) == 1 and warned[0].startswith(f"sharpscope: warning: {run}: the data loaded for it (npz from ")
    assert "differs from its training split: the inputs differ (SHA-256" in warned[0]
    _write_npz(npz, n=150)
    with pytest.warns(DataChangedWarning, match="96 examples recorded, 120 now"):  # 80 % of the examples train
        code, _, err = cli(["hessian", str(run), "--top-k", "1", "--json", "-", "--no-progress"])
    assert code == 0, err
    with pytest.warns(DataChangedWarning, match="96 examples recorded, 120 now"):
        checkpoint_data(load_checkpoint(run))


def test_resume_with_changed_data_warns_and_continues(tmp_path, cli):
    npz = _write_npz(tmp_path / "d.npz")
    run = _train(tmp_path / "run", npz, epochs=1)
    _write_npz(npz, seed=1)
    with pytest.warns(DataChangedWarning, match="the inputs differ"):
        code, _, err = cli(["train", "--resume", "--out", str(run), "--no-progress"])
    assert code == 0, err


def test_old_checkpoint_without_a_fingerprint_says_nothing(tmp_path, cli):
    npz = _write_npz(tmp_path / "d.npz")
    run = _train(tmp_path / "run", npz)
    raw = read_checkpoint(run)
    del raw["data_fingerprint"]  # as written before fingerprints existed
    torch.save(raw, run / "checkpoint.pt")
    _write_npz(npz, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = checkpoint_data(load_checkpoint(run))
    assert data.x_train.shape[0] == 96
    code, _, err = cli(["gradcos", str(run), "--json", "-"])
    assert code == 0 and "warning" not in err


# --- interpolate on two runs trained on different splits --------------------------------------

@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    npz = _write_npz(root / "d.npz")
    for name, kw in {"a": {}, "seed": {"seed": 1}, "noise": {"label_noise": 0.3}, "same": {"lr": 0.05}}.items():
        _train(root / name, npz, **kw)
    return root


@pytest.mark.parametrize("other,fragment", [("seed", "seed 0 for A, 1 for B"),
                                            ("noise", "label_noise 0.0 for A, 0.3 for B")])
def test_interpolate_refuses_runs_trained_on_different_splits(split_runs, other, fragment, cli, tmp_path):
    code, _, err = cli(["interpolate", str(split_runs / "a"), str(split_runs / other), "--grid", "0:1:3",
                        "--out", str(tmp_path), "--no-progress"])
    line = _one_line_error(code, err)
    assert "A and B were trained on different data" in line and fragment in line and "--use-a-data" in line
    assert not any(tmp_path.iterdir())


def test_interpolate_use_a_data_says_which_data(split_runs, cli, tmp_path):
    code, out, err = cli(["interpolate", str(split_runs / "a"), str(split_runs / "noise"), "--grid", "0:1:3",
                          "--out", str(tmp_path), "--use-a-data", "--no-progress"])
    assert code == 0, err
    assert "both evaluated on A's train data" in err
    report = json.loads((tmp_path / "interpolation.json").read_text())
    assert report["options"]["data"] == "A's"
    assert report["options"]["data_differences"] == ["label_noise 0.0 for A, 0.3 for B"]


def test_interpolate_same_split_runs(split_runs, cli, tmp_path):
    code, _, err = cli(["interpolate", str(split_runs / "a"), str(split_runs / "same"), "--grid", "0:1:3",
                        "--out", str(tmp_path), "--no-progress"])
    assert code == 0, err
    assert json.loads((tmp_path / "interpolation.json").read_text())["options"]["data_differences"] == []


def test_training_data_differences_trust_fingerprints_over_paths(split_runs, tmp_path):
    a = load_checkpoint(split_runs / "a")
    moved = tmp_path / "moved.npz"
    shutil.copy(split_runs / "d.npz", moved)
    b = load_checkpoint(split_runs / "same")
    b.data_spec = {**b.data_spec, "root": str(moved)}
    assert training_data_differences(a, b) == []  # the same file elsewhere
    b.data_fingerprint = None  # without fingerprints, the specs (root included) decide
    assert training_data_differences(a, b) == [f"root {a.data_spec['root']!r} for A, {str(moved)!r} for B"]
