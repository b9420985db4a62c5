"""Checkpoints: round trip, atomic writes, and every kind of bad file refused cleanly."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import pytest
import torch

from sharpscope import CheckpointError, load_checkpoint, save_checkpoint
from sharpscope.checkpoint import FORMAT, FORMAT_VERSION, read_checkpoint
from sharpscope.io import atomic_write_bytes
from sharpscope.models import build_model, make_model_spec


def _model_and_spec(bn: bool = True):
    spec = make_model_spec("cnn", (1, 8, 8), 10, channels=[4, 8], hidden=16, bn=bn)
    torch.manual_seed(0)
    return build_model(spec), spec


def test_round_trip_rebuilds_model_and_keeps_everything(tmp_path):
    model, spec = _model_and_spec()
    model.train()
    model(torch.randn(4, 1, 8, 8))  # move the BN running statistics away from their init
    path = save_checkpoint(tmp_path / "c.pt", model, model_spec=spec, data_spec={"name": "digits"},
                           metrics=[{"epoch": 1, "test_acc": 0.5}], note="hello", numbers=[1, 2.5, None])
    ckpt = load_checkpoint(path)
    assert not ckpt.model.training
    assert ckpt.model_spec == spec and ckpt.data_spec == {"name": "digits"}
    env = ckpt.metadata.pop("environment")  # what wrote it (sharpscope.provenance)
    assert ckpt.metadata == {"note": "hello", "numbers": [1, 2.5, None]}
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["torch_version"] == torch.__version__
    assert env["threads"] == torch.get_num_threads() and env["world_size"] == 1 and env["deterministic"] is False
    assert ckpt.metrics == [{"epoch": 1, "test_acc": 0.5}]
    assert ckpt.progress == {} and ckpt.epoch is None  # saved outside the trainer: no progress claimed
    for (k, a), (k2, b) in zip(model.state_dict().items(), ckpt.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    raw = torch.load(path, weights_only=True)  # what any user can do, safely
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION


def test_loading_does_not_alias_the_saved_model(tmp_path):
    model, spec = _model_and_spec()
    save_checkpoint(tmp_path / "c.pt", model, model_spec=spec)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    with torch.no_grad():
        next(ckpt.model.parameters()).add_(1.0)
    assert not torch.equal(next(ckpt.model.parameters()), next(model.parameters()))


def test_non_plain_metadata_is_refused_before_writing(tmp_path):
    model, spec = _model_and_spec()
    with pytest.raises(CheckpointError, match="cannot be stored"):
        save_checkpoint(tmp_path / "c.pt", model, model_spec=spec, bad={1, 2})
    with pytest.raises(CheckpointError, match="cannot be stored"):
        save_checkpoint(tmp_path / "c.pt", model, model_spec=spec, bad=Path("x"))
    assert not (tmp_path / "c.pt").exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    model, spec = _model_and_spec()
    path = save_checkpoint(tmp_path / "c.pt", model, model_spec=spec, version="old")
    before = path.read_bytes()

    def broken_writer(fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, broken_writer)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    assert load_checkpoint(path).metadata["version"] == "old"


def test_atomic_writes_live_in_io_and_the_old_spelling_still_works_with_a_notice():
    import sharpscope.checkpoint as ckpt_mod
    import sharpscope.io as io_mod

    assert "atomic_write_bytes" not in vars(ckpt_mod) and "atomic_write_bytes" not in ckpt_mod.__all__
    with pytest.warns(DeprecationWarning, match="moved to sharpscope.io.atomic_write_bytes"):
        assert ckpt_mod.atomic_write_bytes is io_mod.atomic_write_bytes
    with pytest.raises(AttributeError):
        ckpt_mod.no_such_name


def test_missing_empty_truncated_garbage_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(tmp_path / "empty.pt")
    model, spec = _model_and_spec()
    good = save_checkpoint(tmp_path / "good.pt", model, model_spec=spec).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path / "cut.pt")
    rng = random.Random(0)
    for i in range(200):  # arbitrary bytes make the legacy unpickler fail in many different ways
        (tmp_path / "junk.pt").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="without checkpoint.pt"):
        load_checkpoint(tmp_path / "run")


def test_a_run_folder_loads_its_checkpoint(tmp_path):
    model, spec = _model_and_spec()
    save_checkpoint(tmp_path / "checkpoint.pt", model, model_spec=spec)
    assert load_checkpoint(tmp_path).model_spec == spec


def test_foreign_files_are_refused(tmp_path):
    model, _ = _model_and_spec()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a sharpscope checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "model_spec": {}, "model_state": {}},
               tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("hello.txt", "not torch")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "other.zip")


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    model, spec = _model_and_spec()
    evil = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_spec": spec,
            "model_state": model.state_dict(), "metadata": {"x": _Payload(marker)}}
    torch.save(evil, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    # a raw pickle (not a torch zip file) with the same payload
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_weights_that_do_not_fit_the_spec(tmp_path):
    model, spec = _model_and_spec()
    other = make_model_spec("cnn", (1, 8, 8), 10, channels=[4, 8], hidden=32, bn=True)
    save_checkpoint(tmp_path / "c.pt", model, model_spec=other)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "c.pt")


def test_factory_models_are_only_imported_when_trusted(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "my_models_ckpt.py").write_text(
        "import pathlib, torch\n"
        f"pathlib.Path({str(marker)!r}).write_text('yes')\n"
        "def tiny(width=3):\n"
        "    return torch.nn.Linear(2, width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"factory": "my_models_ckpt:tiny", "kwargs": {"width": 3}}
    save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(2, 3), model_spec=spec)
    with pytest.raises(CheckpointError, match="factory"):
        load_checkpoint(tmp_path / "c.pt")
    assert not marker.exists()
    ckpt = load_checkpoint(tmp_path / "c.pt", allow_factory=True)
    assert marker.exists() and ckpt.model.out_features == 3


def test_read_checkpoint_exposes_the_raw_layout(tmp_path):
    model, spec = _model_and_spec()
    save_checkpoint(tmp_path / "c.pt", model, model_spec=spec, progress={"epoch": 3, "step": 30,
                                                                         "batch_in_epoch": 0, "finished": True})
    raw = read_checkpoint(tmp_path / "c.pt")
    assert raw["progress"]["epoch"] == 3 and raw["optimizer_state"] is None
    assert set(raw) >= {"format", "format_version", "model_spec", "model_state", "optimizer_state", "data_spec",
                        "config", "progress", "rng", "metrics", "metadata", "torch_version", "sharpscope_version"}
