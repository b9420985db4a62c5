"""A researcher's own model, run folder and checkpoint through every verb (issue 23, items 1-3).

1. A run folder or checkpoint never chooses what code runs: a factory its configuration names
   runs only when the user names it on the command line (``--model``) or passes
   ``--trust-factory``; ``build_model`` refuses factories by default.
2. The factory named on the command line is trusted for the runs ``compare`` and ``sweep``
   make, resolves from the current folder as ``python -m`` does, and is imported, called and
   checked on the data before the first folder is made or training step taken.
3. Every analysis verb takes ``--data`` / ``--data-root`` in place of the recorded data set, and
   a bare ``state_dict`` is refused with a line naming ``save_checkpoint``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import sharpscope as ss
from sharpscope.checkpoint import read_checkpoint
from sharpscope.data import analysis_data_spec
from sharpscope.errors import CheckpointError, ConfigError, DataError, ModelSpecError
from sharpscope.models import build_model, check_factory_allowed, make_factory_spec, make_model_spec
from sharpscope.train import TrainConfig, train

from _runs import tiny_run

TINY = ["--data", "synthetic", "--n-train", "64", "--epochs", "1", "--batch-size", "32", "--no-progress",
        "--no-snapshots"]

# A factory module: it leaves a line in MARKER when it is imported and one when it is called,
# so a test can tell whether the code ran at all.
_FACTORY_SOURCE = '''
import pathlib
from torch import nn

MARKER = pathlib.Path({marker!r})
with MARKER.open("a") as fh:
    fh.write("imported\\n")


def build(width=8, features=16, classes=4):
    with MARKER.open("a") as fh:
        fh.write("called\\n")
    return nn.Sequential(nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, classes))


def broken(**kwargs):
    raise RuntimeError("my factory is broken")


def wrong_shape(**kwargs):
    with MARKER.open("a") as fh:
        fh.write("called\\n")
    return nn.Linear(3, 4)
'''


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharpscope: error: "), err
    return lines[0]


@pytest.fixture
def own_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A uniquely named factory module in a folder that is the current folder but not on
    sys.path (as for a researcher running the console script); yields (name, marker, folder).
    sys.path and sys.modules are restored afterwards."""
    folder = tmp_path / "work"
    folder.mkdir()
    name = f"mynets_{uuid.uuid4().hex[:12]}"
    marker = folder / "factory_ran.txt"
    (folder / f"{name}.py").write_text(_FACTORY_SOURCE.format(marker=str(marker)))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(folder))])
    monkeypatch.chdir(folder)
    yield name, marker, folder
    sys.modules.pop(name, None)


def _tampered_run(folder: Path, factory: str, kwargs: dict) -> Path:
    """A finished run folder (tiny built-in MLP) whose stored configuration and model spec were
    edited to name ``factory`` with ``kwargs``: a run folder someone sent you."""
    run = folder / "sent_run"
    tiny_run(run, keep_snapshots=False)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    raw["config"]["model"], raw["config"]["model_kwargs"] = factory, dict(kwargs)
    raw["model_spec"] = {"factory": factory, "kwargs": dict(kwargs)}
    torch.save(raw, run / "checkpoint.pt")
    return run


# --------------------------------------------------------------------------- item 1: resume


def test_build_model_refuses_factories_unless_allowed_by_name_or_trust(own_module) -> None:
    name, marker, _ = own_module
    spec = make_factory_spec(f"{name}:build", width=4)
    for refused in (False, f"{name}:wrong_shape"):
        with pytest.raises(ModelSpecError, match="--trust-factory"):
            build_model(spec, allow_factory=refused)
    with pytest.raises(ModelSpecError, match="--trust-factory"):
        build_model(spec)  # the default
    with pytest.raises(ModelSpecError, match="--trust-factory"):
        check_factory_allowed(spec, False)
    assert not marker.exists() and name not in sys.modules
    check_factory_allowed(spec, f" {name} : build ")  # the same factory, spaces aside: nothing raised
    assert build_model(spec, allow_factory=f"{name}:build")[1].out_features == 4  # found in the current folder
    assert marker.read_text().split() == ["imported", "called"]


def test_resume_of_a_sent_run_folder_never_runs_os_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          cli) -> None:
    """The issue's example: a config naming os:system with a command keyword."""
    calls: list = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append((a, k)) or 0)
    run = _tampered_run(tmp_path, "os:system", {"command": f"touch {tmp_path / 'pwned'}"})
    start = time.perf_counter()
    line = _one_line_error(*cli(["train", "--resume", "--out", str(run), "--no-progress"])[::2])
    assert "os:system" in line and "--trust-factory" in line and "--model os:system" in line
    assert calls == [] and not (tmp_path / "pwned").exists()
    assert time.perf_counter() - start < 10
    with pytest.raises(ConfigError, match="--trust-factory"):
        train(None, run, resume=True)  # the API refuses the same way
    assert calls == []


def test_resume_runs_a_stored_factory_only_when_named_or_trusted(own_module, cli) -> None:
    name, marker, folder = own_module
    run = folder / "run"
    train(TrainConfig(optimizer="sgd", model=f"{name}:build", data="synthetic", n_train=64, epochs=1,
                      batch_size=32, keep_snapshots=False), run)  # the caller's own config: its factory runs
    marker.unlink()
    sys.modules.pop(name, None)
    code, _, err = cli(["train", "--resume", "--out", str(run), "--no-progress"])
    assert f"--model {name}:build" in _one_line_error(code, err)
    assert not marker.exists() and name not in sys.modules  # not even imported
    line = _one_line_error(*cli(["train", "--resume", "--out", str(run), "--no-progress",
                                 "--model", f"{name}:wrong_shape"])[::2])
    assert f"{name}:build" in line and f"{name}:wrong_shape" in line
    assert not marker.exists()
    code, _, err = cli(["train", "--resume", "--out", str(run), "--no-progress", "--model", f"{name}:build"])
    assert code == 0, err
    assert marker.read_text().split() == ["imported", "called"]
    code, _, err = cli(["train", "--resume", "--out", str(run), "--no-progress", "--trust-factory"])
    assert code == 0, err
    assert marker.read_text().split() == ["imported", "called", "called"]


def test_a_fresh_run_trusts_the_factory_it_names_and_resume_without_it_is_refused(own_module, cli) -> None:
    name, marker, folder = own_module
    code, _, err = cli(["train", "--model", f"{name}:build", *TINY, "--out", "mine"])
    assert code == 0, err
    assert (folder / "mine" / "checkpoint.pt").exists()
    raw = read_checkpoint(folder / "mine")
    assert raw["model_spec"] == {"factory": f"{name}:build", "kwargs": {}}
    _one_line_error(*cli(["train", "--resume", "--out", "mine", "--no-progress"])[::2])
    with pytest.raises(CheckpointError, match="--trust-factory"):
        ss.load_checkpoint(folder / "mine")
    assert ss.load_checkpoint(folder / "mine", allow_factory=f"{name}:build").model[1].out_features == 8


def test_correlate_refuses_a_factory_run_before_measuring_any(own_module, cli) -> None:
    name, marker, folder = own_module
    runs = folder / "runs"
    tiny_run(runs / "a_builtin", keep_snapshots=False)
    tiny_run(runs / "c_builtin", keep_snapshots=False, seed=1)  # correlate needs 3
    train(TrainConfig(optimizer="sgd", model=f"{name}:build", data="synthetic", n_train=64, epochs=1,
                      batch_size=32, keep_snapshots=False), runs / "b_factory")
    marker.unlink()
    sys.modules.pop(name, None)
    args = ["correlate", str(runs), "--out", str(folder / "corr"), "--measures", "lambda_max", "--samples", "32",
            "--min-train-acc", "0", "--no-progress", "--resamples", "100"]
    line = _one_line_error(*cli(args)[::2])
    assert "b_factory" in line and "--trust-factory" in line
    assert not (runs / "a_builtin" / "measures.json").exists()  # refused before the first measure
    assert not marker.exists()
    code, _, err = cli([*args, "--trust-factory"])
    assert code == 0, err
    assert (runs / "b_factory" / "measures.json").exists()


# --------------------------------------------------------------------------- item 2: compare, sweep


@pytest.mark.parametrize("where", ["current folder", "sys.path"])
def test_sweep_trains_and_analyses_a_factory_named_on_the_command_line(own_module, cli, monkeypatch, where) -> None:
    """Found in the current folder as ``python -m`` would (the console script does not put it on
    sys.path), or on sys.path; trusted for the analyses of the runs the sweep made."""
    name, marker, folder = own_module
    if where == "sys.path":
        monkeypatch.syspath_prepend(str(folder))
    code, out, err = cli(["sweep", "--model", f"{name}:build", "--data", "synthetic", "--n-train", "64",
                          "--epochs", "1", "--seeds", "2", "--profile", "quick", "--analyses", "lambda_max",
                          "--out", "sw", "--no-progress"])
    assert code == 0, err
    assert len(list((folder / "sw" / "runs").glob("*/analysis.json"))) == 4  # sgd and sam, 2 seeds each
    assert "lambda_max" in out


@pytest.mark.slow
def test_compare_trains_and_analyses_a_factory_named_on_the_command_line(own_module, cli) -> None:
    name, marker, folder = own_module
    code, out, err = cli(["compare", "--model", f"{name}:build", "--model-opt", "width=6", "--data", "synthetic",
                          "--quick", "--epochs", "1", "--seeds", "2", "--out", "cmp", "--no-progress"])
    assert code == 0, err
    assert (folder / "cmp" / "report.md").exists() and "SAM (mean of 2)" in out
    code, _, err = cli(["compare", "--model", f"{name}:build", "--model-opt", "width=6", "--data", "synthetic",
                        "--quick", "--epochs", "1", "--seeds", "2", "--out", "cmp", "--no-progress",
                        "--trust-factory"])  # accepted (implied) and everything reused
    assert code == 0, err


@pytest.mark.parametrize("verb", ["compare", "sweep"])
@pytest.mark.parametrize(("attr", "fragment"), [("broken", "my factory is broken"),
                                                 ("wrong_shape", "does not accept inputs"),
                                                 ("missing", "has no attribute 'missing'")])
def test_a_bad_factory_fails_before_any_folder_or_training_step(own_module, cli, monkeypatch, verb: str, attr: str,
                                                                fragment: str) -> None:
    name, marker, folder = own_module
    monkeypatch.syspath_prepend(str(folder))  # importable: what is checked is the factory itself
    args = {"compare": ["compare", "--profile", "quick", "--seeds", "2"],
            "sweep": ["sweep", "--seeds", "2", "--profile", "quick"]}[verb]
    start = time.perf_counter()
    line = _one_line_error(*cli([*args, "--model", f"{name}:{attr}", "--data", "synthetic", "--epochs", "1",
                                 "--out", "out", "--no-progress"])[::2])
    assert fragment in line
    assert not (folder / "out").exists()  # no folder, no run, no checkpoint
    assert time.perf_counter() - start < 10


def test_a_factory_module_missing_from_the_current_folder_fails_before_training(own_module, cli) -> None:
    _, _, folder = own_module
    line = _one_line_error(*cli(["sweep", "--model", "no_such_mynets:build", "--data", "synthetic", "--epochs",
                                 "1", "--out", "out", "--no-progress"])[::2])
    assert "cannot import module 'no_such_mynets'" in line
    assert not (folder / "out").exists()


# --------------------------------------------------------------------------- item 3: any checkpoint


@pytest.fixture(scope="module")
def own_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny MLP trained by 'the user's own code' on a synthetic npz, saved without a data
    spec, with one, and as a bare state_dict."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    np.savez(root / "my.npz", X=x, y=y)
    spec = make_model_spec("mlp", (6,), 4, hidden=[8])
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    ss.save_checkpoint(root / "nodata.pt", model, model_spec=spec)
    ss.save_checkpoint(root / "withdata.pt", model, model_spec=spec,
                       data_spec={"name": "npz", "root": str(root / "my.npz")})
    torch.save(model.state_dict(), root / "bare.pt")
    return {"root": root, "nodata": root / "nodata.pt", "withdata": root / "withdata.pt", "bare": root / "bare.pt",
            "npz": root / "my.npz"}


# Each analysis verb on {ckpt}, and the numbers of its JSON that depend on the data.
VERBS = {
    "hessian": (["hessian", "{ckpt}", "--top-k", "1", "--no-progress", "--json", "-"],
                lambda d: d["eigenvalues"]["eigenvalues"]),
    "sharpness": (["sharpness", "{ckpt}", "--m", "8", "--ascent-steps", "1", "--no-progress", "--json", "-"],
                  lambda d: [r["mean"] for r in d["results"]]),
    "gradcos": (["gradcos", "{ckpt}", "--json", "-"], lambda d: [d["cosine"], d["surrogate_gap"]]),
    "surface": (["surface", "{ckpt}", "--dim", "1", "--grid", "-1:1:3", "--no-progress", "--out", "{out}",
                 "--json", "-"], lambda d: d["summary"]["centre_loss"]),
    "interpolate": (["interpolate", "{ckpt}", "{ckpt}", "--grid", "0:1:3", "--no-progress", "--out", "{out}",
                     "--json", "-"], lambda d: d["summary"]["centre_loss"]),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_analysis_verb_takes_data_for_a_checkpoint_that_records_none(own_checkpoints, tmp_path, cli,
                                                                           verb: str) -> None:
    template, numbers = VERBS[verb]
    args = [a.format(ckpt=own_checkpoints["nodata"], out=tmp_path / "o") for a in template]
    line = _one_line_error(*cli(args)[::2])
    assert "records no data set" in line and "--data" in line and "save_checkpoint" in line
    code, out, err = cli([*args, "--data", "npz", "--data-root", str(own_checkpoints["npz"])])
    assert code == 0, err
    code, out_recorded, err = cli([a.format(ckpt=own_checkpoints["withdata"], out=tmp_path / "p")
                                   for a in template])
    assert code == 0, err
    given, recorded = numbers(json.loads(out)), numbers(json.loads(out_recorded))
    assert np.all(np.isfinite(given))
    assert given == recorded  # the same data named on the command line or in the checkpoint: the same numbers


def test_data_root_alone_replaces_the_recorded_root(own_checkpoints, tmp_path, cli) -> None:
    moved = tmp_path / "moved.npz"
    moved.write_bytes(own_checkpoints["npz"].read_bytes())
    args = ["gradcos", str(own_checkpoints["withdata"]), "--json", "-"]
    code, recorded, err = cli(args)
    assert code == 0, err
    code, elsewhere, err = cli([*args, "--data-root", str(moved)])
    assert code == 0, err
    assert json.loads(recorded)["cosine"] == json.loads(elsewhere)["cosine"]
    code, _, err = cli([*args, "--data-root", str(tmp_path / "gone.npz")])
    assert code == 2 and "gone.npz" in err


def test_analysis_data_spec_rules(tmp_path) -> None:
    stored = {"name": "npz", "root": "/old/my.npz", "seed": 3, "label_noise": 0.2, "n_train": 50}
    assert analysis_data_spec(stored).to_dict() == ss.data.DataSpec.from_dict(stored).to_dict()
    moved = analysis_data_spec(stored, None, str(tmp_path / "new.npz"))
    assert (moved.root, moved.seed, moved.label_noise, moved.n_train) == (str(tmp_path / "new.npz"), 3, 0.2, 50)
    same = analysis_data_spec(stored, "npz", "rel.npz")  # the recorded data set, its split kept
    assert same.root == os.path.abspath("rel.npz") and same.seed == 3
    other = analysis_data_spec(stored, "digits")  # another data set: its defaults
    assert other.to_dict() == ss.data.DataSpec(name="digits").to_dict()
    assert analysis_data_spec(None, "synthetic").name == "synthetic"
    with pytest.raises(DataError, match="records no data set"):
        analysis_data_spec(None)
    with pytest.raises(DataError, match="--data-root alone"):
        analysis_data_spec(None, None, "x.npz")
    with pytest.raises(DataError, match="unknown dataset"):
        analysis_data_spec(stored, "imagenet")


def test_a_bare_state_dict_is_refused_with_how_to_wrap_it(own_checkpoints, cli) -> None:
    with pytest.raises(CheckpointError, match=r"bare state_dict.*save_checkpoint\(path, model, model_spec="):
        ss.load_checkpoint(own_checkpoints["bare"])
    line = _one_line_error(*cli(["hessian", str(own_checkpoints["bare"]), "--no-progress"])[::2])
    assert "sharpscope.save_checkpoint" in line and "data_spec" in line


def test_save_checkpoint_documents_data_spec() -> None:
    doc = ss.save_checkpoint.__doc__ or ""
    assert "data_spec={" in doc and "sharpscope hessian" in doc


# --------------------------------------------------------------------------- the README walkthrough

# The README's "Your own model, data and checkpoints", verbatim (keep in step with it).
README_MYNETS = '''from torch import nn

def build(width=64, classes=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(16, width), nn.ReLU(), nn.Linear(width, classes))
'''
README_TRAINING = [
    "sharpscope train --model mynets:build --model-opt width=32 --data npz --data-root my.npz --epochs 10 "
    "--out runs/mine",
    "sharpscope compare --model mynets:build --model-opt width=32 --data npz --data-root my.npz --profile quick --seeds 2 "
    "--out runs/mine-compare",
]
README_ANALYSES = [
    "sharpscope hessian mine.pt --trust-factory --top-k 5 --trace",
    "sharpscope surface mine.pt --trust-factory --grid -1:1:21 --plot",
    "sharpscope hessian mine.pt --trust-factory --data npz --data-root my.npz --json hessian_npz.json",
]


def test_the_readme_shows_the_walkthrough_this_file_runs() -> None:
    """The README's own-model section holds these commands and this factory verbatim, so the
    slow walkthrough below runs what a reader copies."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Your own model, data and checkpoints"):]
    section = section[:section.index("\n## ", 5)]
    assert README_MYNETS in section
    for command in [*README_TRAINING, *README_ANALYSES]:
        assert command in section, command
    assert 'ss.save_checkpoint("mine.pt", model, model_spec={"factory": "mynets:build", "kwargs": {"width": 32}},' \
        in section


@pytest.mark.slow
def test_readme_own_model_walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:
    """The README's commands for a researcher's own model, in a fresh folder: their factory through
    train and compare, a checkpoint saved by their own loop through hessian and surface."""
    import shlex

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd(), str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    (tmp_path / "mynets.py").write_text(README_MYNETS)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    np.savez(tmp_path / "my.npz", X=x, y=((x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)))
    for command in README_TRAINING:
        code, _, err = cli(shlex.split(command)[1:])
        assert code == 0, (command, err)
    assert (tmp_path / "runs" / "mine" / "checkpoint.pt").exists()
    assert (tmp_path / "runs" / "mine-compare" / "report.md").exists()

    import mynets  # the user's own training loop, then the README's save_checkpoint call
    model = mynets.build(width=32)
    data = np.load(tmp_path / "my.npz")
    xt, yt = torch.from_numpy(data["X"]), torch.from_numpy(data["y"])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    ss.save_checkpoint("mine.pt", model, model_spec={"factory": "mynets:build", "kwargs": {"width": 32}},
                       data_spec={"name": "npz", "root": "my.npz"})
    for command in README_ANALYSES:
        code, _, err = cli(shlex.split(command)[1:])
        assert code == 0, (command, err)
    assert list((tmp_path / "surface").glob("*.png"))


@pytest.mark.parametrize("verb", ["train", "compare", "sweep", "correlate", "hessian", "sharpness", "gradcos",
                                  "surface", "interpolate", "weights"])
def test_every_verb_that_builds_a_stored_model_takes_trust_factory(cli, verb: str) -> None:
    code, out, err = cli([verb, "--help"])
    assert code == 0, err
    assert "--trust-factory" in out
    if verb in VERBS:
        assert "--data " in out and "--data-root" in out
