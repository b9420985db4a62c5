"""`sharpscope compare --quick` end to end: every output file and every results.json key."""

from __future__ import annotations

import json

import pytest

from sharpscope.cli import main

FIGURES = ["training_curves.png", "density.png", "eigenvalues.png", "surfaces.png", "surfaces_3d.png",
           "interpolation.png", "m_sharpness.png", "gradcos.png"]
PER_OPTIMIZER = ["final", "metrics", "eigenvalues", "lambda_max", "ratio", "trace", "density", "m_sharpness",
                 "surrogate_gap", "gradcos", "surface", "gradcos_over_training"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context():
        try:
            main(["compare", "--quick", "--out", str(out), "--no-progress"])
        except SystemExit as exit_info:
            assert exit_info.code == 0
    return out


@pytest.mark.slow
def test_every_output_file(compared):
    for name in FIGURES:
        assert (compared / "figures" / name).stat().st_size > 5000, name
    for opt in ("sgd", "sam"):
        for name in ("checkpoint.pt", "metrics.jsonl", "analysis.json", "surface_2d.npz"):
            assert (compared / opt / name).is_file(), (opt, name)
    assert (compared / "interpolation.npz").is_file()
    report = (compared / "report.md").read_text()
    assert "| SGD |" in report and "| SAM |" in report
    for name in FIGURES:
        assert f"(figures/{name})" in report


@pytest.mark.slow
def test_every_results_key(compared):
    results = json.loads((compared / "results.json").read_text())
    assert set(results) == {"config", "settings", "optimizers", "interpolation", "figures", "wall_time"}
    assert set(results["optimizers"]) == {"sgd", "sam"}
    for opt, r in results["optimizers"].items():
        assert set(r) == set(PER_OPTIMIZER), opt
        assert len(r["eigenvalues"]["eigenvalues"]) == 5 and r["lambda_max"] == r["eigenvalues"]["eigenvalues"][0]
        assert r["ratio"] == pytest.approx(r["lambda_max"] / r["eigenvalues"]["eigenvalues"][4])
        assert r["trace"]["n_hvp"] == 12 and r["density"]["n_runs"] == 2
        assert [x["m"] for x in r["m_sharpness"]["results"]] == [4, 16]
        assert -1 <= r["gradcos"]["cosine"] <= 1
        assert len(r["gradcos_over_training"]) == results["config"]["epochs"] == len(r["metrics"])
        assert {"centre_loss", "basin_width", "loss_increase_at_radius"} <= set(r["surface"])
    interp = results["interpolation"]
    assert len(interp["alphas"]) == len(interp["loss"]) == 11 and "barrier" in interp
    assert sorted(f.split("/")[-1] for f in results["figures"]) == sorted(FIGURES)


@pytest.mark.slow
def test_rerun_reuses_and_conflicting_settings_are_refused(compared, cli):
    before = json.loads((compared / "results.json").read_text())
    code, out, err = cli(["compare", "--quick", "--out", str(compared)])
    assert code == 0 and "reusing the analyses of SGD" in err
    after = json.loads((compared / "results.json").read_text())
    assert after["optimizers"]["sam"]["lambda_max"] == before["optimizers"]["sam"]["lambda_max"]
    code, _, err = cli(["compare", "--quick", "--rho", "0.1", "--out", str(compared), "--no-progress"])
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


def test_bad_optimizer_list(cli, tmp_path):
    code, _, err = cli(["compare", "--optimizers", "sgd,adam", "--out", str(tmp_path)])
    assert code == 2 and "adam" in err
    code, _, err = cli(["compare", "--optimizers", "sam,sam", "--out", str(tmp_path)])
    assert code == 2 and "distinct" in err


def test_an_interrupted_compare_stops_and_then_continues(tmp_path, monkeypatch):
    """Ctrl-C during training saves the run and stops; the same command then finishes it."""
    import sharpscope.experiments.compare as cmp
    from sharpscope.train import Callback

    class CtrlC(Callback):
        def on_step_end(self, state):
            if state.step == 3:
                state.stop_requested = True

    config = cmp.CompareConfig(quick=True, optimizers=["sgd"])
    with pytest.raises(KeyboardInterrupt, match="rerun"):
        cmp.run_compare(config, tmp_path, callbacks_for=lambda opt: [CtrlC()])
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "sgd" / "checkpoint.pt").is_file()
    results = cmp.run_compare(config, tmp_path)
    assert len(results["optimizers"]["sgd"]["metrics"]) == config.epochs


def test_runs_saved_before_a_new_option_existed_are_reused(tmp_path):
    """A checkpoint whose stored config lacks an option added later counts as the default."""
    import sharpscope.experiments.compare as cmp
    from sharpscope.checkpoint import read_checkpoint, save_checkpoint
    from sharpscope.models import build_model
    config = cmp.CompareConfig(quick=True, optimizers=["sgd"])
    cmp.run_compare(config, tmp_path)
    raw = read_checkpoint(tmp_path / "sgd" / "checkpoint.pt")
    del raw["config"]["sync_perturbation"]  # as written by an older sharpscope
    model = build_model(raw["model_spec"])
    model.load_state_dict(raw["model_state"])
    save_checkpoint(tmp_path / "sgd" / "checkpoint.pt", model, model_spec=raw["model_spec"],
                    data_spec=raw["data_spec"], optimizer_state=raw["optimizer_state"], config=raw["config"],
                    progress=raw["progress"], rng=raw["rng"], metrics=raw["metrics"])
    assert cmp.run_compare(config, tmp_path)["optimizers"]["sgd"]["final"]["epoch"] == config.epochs
