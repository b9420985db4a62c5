"""Every verb against every kind of bad input: exit code 2, exactly one line on stderr
('sharpscope: error: ...'), no traceback, and refused quickly (before the analysis runs).

One tiny run (an MLP on 64 synthetic examples) and a set of broken checkpoint files are
built once; each case is one row of the table below. A row's fragment must appear in the
error line, so that a case refused for the wrong reason does not pass.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from sharpscope import checks
from sharpscope.errors import CheckpointError, ConfigError
from sharpscope.train import TrainConfig

from _runs import tiny_run

TINY_TRAIN = ["--data", "synthetic", "--model", "mlp", "--model-opt", "hidden=[8]", "--n-train", "64",
              "--epochs", "1", "--batch-size", "32", "--no-progress", "--no-snapshots"]
FAST = ["--samples", "32", "--no-progress"]
HUGE = "1" + "0" * 12  # a size no machine holds


def _broken(raw: dict, folder: Path) -> dict[str, Path]:
    """Checkpoint files that are wrong in one way each."""
    nan_state = {k: v.clone() for k, v in raw["model_state"].items()}
    next(iter(nan_state.values())).view(-1)[0] = math.nan
    variants = {
        "list_state": {"model_state": list(raw["model_state"].values())},
        "state_of_ints": {"model_state": {k: 1 for k in raw["model_state"]}},
        "spec_str": {"model_spec": "mlp"},
        "metrics_int": {"metrics": 5},
        "metrics_of_str": {"metrics": ["epoch 1"]},
        "progress_list": {"progress": [1, 2]},
        "progress_float": {"progress": {**raw["progress"], "epoch": 1.5}},
        "data_spec_list": {"data_spec": [1]},
        "config_str": {"config": "sam"},
        "metadata_list": {"metadata": [1]},
        "nan_weights": {"model_state": nan_state},
    }
    files = {}
    for name, change in variants.items():
        files[name] = folder / f"{name}.pt"
        torch.save({**raw, **change}, files[name])
    files["missing"] = folder / "missing.pt"
    files["folder_without_checkpoint"] = folder / "empty_folder"
    files["folder_without_checkpoint"].mkdir()
    files["empty"] = folder / "empty.pt"
    files["empty"].write_bytes(b"")
    files["garbage"] = folder / "garbage.pt"
    files["garbage"].write_bytes(b"\x80\x04garbage")
    files["truncated"] = folder / "truncated.pt"
    files["truncated"].write_bytes((folder / "run" / "checkpoint.pt").read_bytes()[:500])
    files["bare_state_dict"] = folder / "bare.pt"
    torch.save(raw["model_state"], files["bare_state_dict"])
    return files


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    tiny_run(root / "run", optimizer="sam")
    raw = torch.load(root / "run" / "checkpoint.pt", weights_only=True)
    return {"run": root / "run", "root": root, **_broken(raw, root)}


BAD_FILES = ["missing", "folder_without_checkpoint", "empty", "garbage", "truncated", "bare_state_dict",
             "list_state", "state_of_ints", "spec_str", "metrics_int", "metrics_of_str", "progress_list",
             "progress_float", "data_spec_list", "config_str", "metadata_list", "nan_weights"]
INFO_READS_NAN = {"nan_weights"}  # info shows what a file holds, NaN weights included (tested below)

# Every verb that reads a checkpoint, with {bad} where the file goes.
FILE_VERBS = {
    "info": ["info", "{bad}"],
    "hessian": ["hessian", "{bad}", *FAST],
    "surface": ["surface", "{bad}", "--grid", "-1:1:3", *FAST, "--out", "{out}"],
    "sharpness": ["sharpness", "{bad}", "--m", "4", *FAST],
    "gradcos": ["gradcos", "{bad}", "--samples", "32"],
    "interpolate_a": ["interpolate", "{bad}", "{run}", "--grid", "0:1:3", *FAST, "--out", "{out}"],
    "interpolate_b": ["interpolate", "{run}", "{bad}", "--grid", "0:1:3", *FAST, "--out", "{out}"],
}

# (verb arguments, fragment of the error line): bad numbers, sizes, names, NaN.
OPTION_CASES: list[tuple[list[str], str]] = [
    # hessian
    (["hessian", "{run}", *FAST, "--top-k", "-1"], "--top-k"),
    (["hessian", "{run}", *FAST, "--top-k", "1000000"], "exceeds the dimension"),
    (["hessian", "{run}", *FAST, "--tol", "nan"], "--tol"),
    (["hessian", "{run}", *FAST, "--tol", "0"], "--tol"),
    (["hessian", "{run}", *FAST, "--tol", "2"], "< 1"),
    (["hessian", "{run}", *FAST, "--trace", "--trace-matvecs", "0"], "--trace-matvecs"),
    (["hessian", "{run}", *FAST, "--density", "--runs", "0"], "--runs"),
    (["hessian", "{run}", *FAST, "--density", "--runs", HUGE], "memory"),
    (["hessian", "{run}", *FAST, "--density", "--slq-steps", "-3"], "--slq-steps"),
    (["hessian", "{run}", *FAST, "--density", "--sigma-squared", "nan"], "--sigma-squared"),
    (["hessian", "{run}", *FAST, "--density", "--sigma-squared", "-1"], "--sigma-squared"),
    (["hessian", "{run}", "--samples", "0", "--no-progress"], "subset size"),
    (["hessian", "{run}", "--samples", "-5", "--no-progress"], "subset size"),
    (["hessian", "{run}", *FAST, "--batch-size", "0"], "--batch-size"),
    (["hessian", "{run}", *FAST, "--seed", "-1"], "--seed"),
    (["hessian", "{run}", *FAST, "--seed", "1" + "0" * 25], "--seed"),
    (["hessian", "{run}", *FAST, "--which", "XX"], "which"),
    (["hessian", "{run}", *FAST, "--per-layer", "--by", "neuron"], "layer"),
    (["hessian", "{run}", *FAST, "--hvp-mode", "magic"], "magic"),
    (["hessian", "{run}", *FAST, "--split", "validation"], "--split"),
    (["hessian", "{run}", *FAST, "--device", "tpu"], "tpu"),
    (["hessian", "{run}", *FAST, "--operator", "laplacian"], "--operator"),
    (["hessian", "{run}", *FAST, "--operator", "fisher", "--fisher-samples", "0"], "--fisher-samples"),
    (["hessian", "{run}", *FAST, "--operator", "fisher", "--fisher-samples", "lots"], "--fisher-samples"),
    (["hessian", "{run}", *FAST, "--operator", "fisher", "--fisher-samples", HUGE], "memory"),
    (["hessian", "{run}", *FAST, "--operator", "ggn", "--fisher-samples", "2"], "fisher only"),
    (["hessian", "{run}", *FAST, "--fisher-samples", "exact"], "fisher only"),
    # surface
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--batch-size", "-2", "--out", "{out}"], "--batch-size"),
    (["surface", "{run}", "--samples", "0", "--no-progress", "--grid", "-1:1:3", "--out", "{out}"], "subset size"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--radii=-1", "--out", "{out}"], "--radii"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--radii", "0.1,nan", "--out", "{out}"], "--radii"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--basin-delta", "-1", "--out", "{out}"], "--basin-delta"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--basin-delta", "nan", "--out", "{out}"], "--basin-delta"),
    (["surface", "{run}", *FAST, "--dim", "4", "--out", "{out}"], "--dim"),
    (["surface", "{run}", *FAST, "--dim", "1", "--grid", f"-1:1:{HUGE}", "--out", "{out}"], "memory"),
    (["surface", "{run}", *FAST, "--dim", "2", "--grid", f"-1:1:{HUGE}", "--out", "{out}"], "memory"),
    (["surface", "{run}", *FAST, "--dim", "2", "--grid", "-1:1:10000000,-1:1:10000000", "--out", "{out}"], "memory"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:0", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["surface", "{run}", *FAST, "--grid", "1:-1:5", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["surface", "{run}", *FAST, "--grid", "nan:1:5", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["surface", "{run}", *FAST, "--grid", "-1:inf:5", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["surface", "{run}", *FAST, "--grid", "-1:1", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["surface", "{run}", *FAST, "--dim", "1", "--grid", "-1:1:3,-1:1:3", "--out", "{out}"], "--dim 1"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--norm", "spectral", "--out", "{out}"], "spectral"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--ignore", "weights", "--out", "{out}"], "weights"),
    (["surface", "{run}", *FAST, "--grid", "-1:1:3", "--seed", "-1", "--out", "{out}"], "--seed"),
    (["surface", *FAST, "--out", "{out}"], "CHECKPOINT"),
    (["surface", "--trajectory", "{run}", *FAST, "--out", "{out}"], "3 snapshots"),
    (["surface", "--trajectory", "{root}/missing_run", *FAST, "--out", "{out}"], "no such checkpoint"),
    # interpolate
    (["interpolate", "{run}", "{run}", *FAST, "--grid", "0:1:3", "--batch-size", "0", "--out", "{out}"], "--batch-size"),
    (["interpolate", "{run}", "{run}", "--samples", "0", "--no-progress", "--out", "{out}"], "subset size"),
    (["interpolate", "{run}", "{run}", *FAST, "--grid", f"0:1:{HUGE}", "--out", "{out}"], "memory"),
    (["interpolate", "{run}", "{run}", *FAST, "--grid", "0:1", "--out", "{out}"], "MIN:MAX:POINTS"),
    (["interpolate", "{run}", "{run}", *FAST, "--buffers", "average", "--out", "{out}"], "buffers"),
    # sharpness
    (["sharpness", "{run}", *FAST, "--m", "0"], "--m"),
    (["sharpness", "{run}", *FAST, "--m", "4,-1"], "--m"),
    (["sharpness", "{run}", *FAST, "--m", "1000"], "larger than"),
    (["sharpness", "{run}", *FAST, "--m", "x"], "--m"),
    (["sharpness", "{run}", *FAST, "--m", ","], "--m"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--rho", "nan"], "--rho"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "best"], "--measure"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--adaptive"], "--adaptive"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "average", "--draws", "0"], "--draws"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "worst", "--eta", "-1"], "--eta"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "worst", "--p", "3"], "--p"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "worst", "--restarts", "0"], "--restarts"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--restarts", "2"], "--restarts"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--measure", "average", "--restarts", "4"], "--restarts"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--rho", "-0.1"], "--rho"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--rho", "inf"], "--rho"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--ascent-steps", "0"], "--ascent-steps"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--max-subsets", "0"], "--max-subsets"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--max-subsets", "-1"], "--max-subsets"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--p", "3"], "--p"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--p", "nan"], "--p"),
    (["sharpness", "{run}", *FAST, "--m", "4", "--p", "one"], "--p"),
    (["sharpness", "{run}", "--samples", "0", "--no-progress"], "subset size"),
    # gradcos
    (["gradcos", "{run}", "--samples", "32", "--rho", "nan"], "--rho"),
    (["gradcos", "{run}", "--samples", "32", "--rho", "-1"], "--rho"),
    (["gradcos", "{run}", "--samples", "32", "--batch-size", "0"], "--batch-size"),
    (["gradcos", "{run}", "--samples", "-1"], "subset size"),
    # gradcos never had --steps/--norm/--eta/--plot-dir (sharpness's old spellings): refused, not ignored
    (["gradcos", "{run}", "--samples", "32", "--steps", "5"], "--steps"),
    (["gradcos", "{run}", "--samples", "32", "--plot-dir", "{out}"], "--plot-dir"),
    # train
    (["train", *TINY_TRAIN, "--lr", "nan", "--out", "{out}"], "learning rate"),
    (["train", *TINY_TRAIN, "--lr", "-1", "--out", "{out}"], "learning rate"),
    (["train", *TINY_TRAIN, "--lr", "1000000", "--out", "{out}"], "diverged"),
    (["train", *TINY_TRAIN, "--rho", "nan", "--out", "{out}"], "rho"),
    (["train", *TINY_TRAIN, "--rho", "-0.1", "--out", "{out}"], "rho"),
    (["train", *TINY_TRAIN, "--momentum", "nan", "--out", "{out}"], "momentum"),
    (["train", *TINY_TRAIN, "--wd", "nan", "--out", "{out}"], "weight decay"),
    (["train", *TINY_TRAIN, "--warmup", "nan", "--out", "{out}"], "warm-up"),
    (["train", *TINY_TRAIN, "--p", "nan", "--out", "{out}"], "p must"),
    (["train", *TINY_TRAIN, "--eta", "nan", "--out", "{out}"], "eta"),
    (["train", *TINY_TRAIN, "--label-noise", "nan", "--out", "{out}"], "label noise"),
    (["train", *TINY_TRAIN, "--epochs", "0", "--out", "{out}"], "epochs"),
    (["train", *TINY_TRAIN, "--batch-size", "0", "--out", "{out}"], "batch size"),
    (["train", *TINY_TRAIN, "--n-train", "0", "--out", "{out}"], "n_train"),
    (["train", *TINY_TRAIN, "--n-train", HUGE, "--out", "{out}"], "n_train"),
    (["train", *TINY_TRAIN, "--m", "0", "--out", "{out}"], "m must"),
    (["train", *TINY_TRAIN, "--m", "1000", "--out", "{out}"], "batch size"),
    (["train", *TINY_TRAIN, "--seed", "-1", "--out", "{out}"], "seed"),
    (["train", *TINY_TRAIN, "--seed", "1" + "0" * 25, "--out", "{out}"], "seed"),
    (["train", *TINY_TRAIN, "--checkpoint-every", "0", "--out", "{out}"], "checkpoint"),
    (["train", *TINY_TRAIN, "--track", "gradcos", "--track-samples", "0", "--out", "{out}"], "track"),
    (["train", *TINY_TRAIN, "--nproc", "0", "--out", "{out}"], "--nproc"),
    (["train", *TINY_TRAIN, "--model", "nosuchnet", "--out", "{out}"], "nosuchnet"),
    (["train", *TINY_TRAIN, "--data", "nosuchdata", "--out", "{out}"], "nosuchdata"),
    (["train", *TINY_TRAIN, "--schedule", "step", "--out", "{out}"], "schedule"),
    (["train", *TINY_TRAIN, "--device", "tpu", "--out", "{out}"], "device"),
    (["train", "--resume", "--no-progress", "--out", "{root}/garbage_run"], "unreadable"),
    # compare (refused before the first run trains)
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--optimizer", "sgd,adam"], "adam"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--rho", "nan"], "rho"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--asam-rho", "-1"], "asam_rho"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--label-noise", "nan"], "label noise"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--m", "0"], "m must"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--epochs", "0"], "epochs"),
    (["compare", "--profile", "quick", "--no-progress", "--out", "{out}", "--model", "nosuchnet"], "nosuchnet"),
    # anything
    (["frobnicate"], "frobnicate"),
    (["hessian"], "Missing argument"),
]

FILE_CASES = [(verb, bad) for verb in FILE_VERBS for bad in BAD_FILES
              if not (verb == "info" and bad in INFO_READS_NAN)]


def _run(cli, argv: list[str], env: dict[str, Path], tmp_path: Path, bad: str | None = None
         ) -> tuple[int, str, str, float]:
    fill = {"run": str(env["run"]), "root": str(env["root"]), "out": str(tmp_path / "out"),
            "bad": str(env[bad]) if bad else ""}
    args = [a.format(**fill) for a in argv]
    start = time.perf_counter()
    code, out, err = cli(args)
    return code, out, err, time.perf_counter() - start


def _assert_one_line(code: int, err: str, fragment: str | None) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("sharpscope: error: ") and "Traceback" not in err
    if fragment is not None:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def garbage_run(env) -> None:
    (env["root"] / "garbage_run").mkdir(exist_ok=True)
    (env["root"] / "garbage_run" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")


@pytest.mark.parametrize("verb,bad", FILE_CASES, ids=[f"{v}-{b}" for v, b in FILE_CASES])
def test_every_verb_refuses_every_bad_file(verb, bad, env, cli, tmp_path):
    code, _, err, seconds = _run(cli, FILE_VERBS[verb], env, tmp_path, bad)
    _assert_one_line(code, err, None)
    assert seconds < 10


@pytest.mark.parametrize("argv,fragment", OPTION_CASES, ids=[" ".join(a[:1] + a[-3:]) for a, _ in OPTION_CASES])
def test_every_bad_option_is_one_line(argv, fragment, env, garbage_run, cli, tmp_path):
    code, _, err, seconds = _run(cli, argv, env, tmp_path)
    _assert_one_line(code, err, fragment)
    assert seconds < 10, f"refused only after {seconds:.1f}s"


def test_the_wrong_field_is_named(env, cli, tmp_path):
    for bad, field in [("list_state", "model_state"), ("metrics_int", "metrics"), ("progress_float", "progress.epoch"),
                       ("spec_str", "model_spec"), ("state_of_ints", "model_state")]:
        code, _, err, _ = _run(cli, ["info", "{bad}"], env, tmp_path, bad)
        assert code == 2 and f"'{field}'" in err, err


def test_nan_weights_are_shown_by_info_and_refused_by_analyses(env, cli, tmp_path):
    code, out, _, _ = _run(cli, ["info", "{bad}", "--json", "-"], env, tmp_path, "nan_weights")
    assert code == 0 and '"nonfinite_tensors": [' in out
    code, _, err, _ = _run(cli, FILE_VERBS["hessian"], env, tmp_path, "nan_weights")
    assert code == 2 and "NaN or Inf" in err


def test_a_grid_without_the_centre_reports_what_it_can(env, cli, tmp_path):
    """A grid without the centre leaves the centre loss undefined: printed as n/a, not a TypeError;
    a one-point grid that is not MIN = MAX (linspace keeps MIN alone) is refused in one line."""
    code, out, err, _ = _run(cli, ["surface", "{run}", *FAST, "--dim", "1", "--grid", "0.5:1:2", "--out", "{out}"],
                             env, tmp_path)
    assert code == 0 and "centre loss n/a" in out, err
    code, out, err, _ = _run(cli, ["surface", "{run}", *FAST, "--dim", "1", "--grid", "-1:1:1", "--out", "{out}"],
                             env, tmp_path)
    assert code == 2 and "POINTS >= 2" in err and len(err.strip().splitlines()) == 1


def test_the_library_refuses_the_same_values(env):
    """API users get the same refusals as the command line, as ConfigError / CheckpointError."""
    from sharpscope import hessian, landscape, sharpness
    from sharpscope.experiments.compare import CompareConfig

    model = torch.nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    loss = torch.nn.functional.cross_entropy
    refused = [
        lambda: hessian.density(model, loss, data, sigma_squared=math.nan),
        lambda: hessian.density(model, loss, data, n_runs=10**12),
        lambda: hessian.trace(model, loss, data, n_matvecs=0),
        lambda: hessian.eigenvalues(model, loss, data, k=-1),
        lambda: hessian.eigenvalues(model, loss, data, operator="laplacian"),
        lambda: hessian.trace(model, loss, data, operator="fisher", mc_samples=0),
        lambda: landscape.parse_grid(f"-1:1:{HUGE}"),
        lambda: landscape.surface(model, loss, data, [{}, {}], range(10**7), range(10**7)),
        lambda: sharpness.m_sharpness(model, loss, data, m=2, max_subsets=0),
        lambda: TrainConfig(m=100, batch_size=16),
        lambda: TrainConfig(seed=-1),
        lambda: CompareConfig(asam_rho=math.nan),
        lambda: CompareConfig(optimizers=["sgd", "sam"], epochs=0),
        lambda: checks.finite_float("x", math.inf, at_least=0),
        lambda: checks.int_at_least("n", True, 1),
    ]
    for make in refused:
        with pytest.raises(ConfigError):
            make()
    from sharpscope import load_checkpoint
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint(env["nan_weights"])
    assert not torch.isfinite(next(load_checkpoint(env["nan_weights"], allow_nonfinite=True).model.parameters())).all()


def test_info_shows_tensors_stored_in_metadata(tmp_path, cli):
    """Metadata may hold tensors (a safe checkpoint allows them); info must not crash on them."""
    from sharpscope import save_checkpoint
    save_checkpoint(tmp_path / "meta.pt", torch.nn.Linear(2, 2), model_spec={"name": "mlp"}, extra=torch.ones(3))
    code, out, err = cli(["info", str(tmp_path / "meta.pt"), "--json", "-"])
    assert code == 0 and '"extra": "tensor[3] torch.float32"' in out, err
