"""`sharpscope compare --quick` over paired seeds end to end: every output file, every
results.json key, the statistics against sharpscope.stats, the pairing of seeds."""

from __future__ import annotations

import json

import pytest
import torch

from sharpscope import stats
from sharpscope.cli import main
from sharpscope.experiments.verdicts import METRIC_BOUNDS, run_convergence

FIGURES = ["training_curves.png", "density.png", "eigenvalues.png", "surfaces.png", "surfaces_3d.png",
           "interpolation.png", "m_sharpness.png", "gradcos.png", "edge_of_stability.png", "differences.png"]
PER_SEED = ["final", "scalars", "eigenvalues", "lambda_max", "lambda_ratio", "trace", "m_sharpness", "surrogate_gap",
            "gradcos", "gradcos_over_training"]
SEEDS = [0, 1, 2]
# a comparison of seconds: a small MLP on synthetic data, one epoch
TINY = {"model": "mlp", "model_kwargs": {"hidden": [8]}, "data": "synthetic", "n_train": 200, "epochs": 1}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context():
        try:
            main(["compare", "--quick", "--out", str(out), "--no-progress", "--seeds", "3"])
        except SystemExit as exit_info:
            assert exit_info.code == 0
    return out


@pytest.mark.slow
def test_every_output_file(compared):
    for name in FIGURES:
        assert (compared / "figures" / name).stat().st_size > 5000, name
    for opt in ("sgd", "sam"):
        for seed in SEEDS:
            for name in ("checkpoint.pt", "metrics.jsonl", "analysis.json"):
                assert (compared / opt / f"seed{seed}" / name).is_file(), (opt, seed, name)
        assert (compared / opt / "seed0" / "surface_2d.npz").is_file()
        assert not (compared / opt / "seed1" / "surface_2d.npz").exists()  # figures: first seed only
    assert (compared / "interpolation.npz").is_file()
    report = (compared / "report.md").read_text()
    assert "| SGD | SAM |" in report and "## Paired differences to SGD" in report and "Student t" in report
    assert "## First- vs second-order SAM gradient over training" in report
    for name in FIGURES:
        assert f"(figures/{name})" in report


@pytest.mark.slow
def test_every_results_key_and_the_statistics(compared):
    results = json.loads((compared / "results.json").read_text())
    assert set(results) == {"schema", "config", "settings", "baseline", "ci_method", "optimizers", "interpolation",
                            "warnings",
                            "figures", "wall_time", "environment", "environment_differences",
                            "analysis_environment_differences", "convergence"}
    # provenance: this process analysed; every run recorded what trained it, and they were alike
    assert results["environment"]["torch_version"] == torch.__version__ and results["environment_differences"] == {}
    assert all(run["trained_in"]["threads"] >= 1 and run["analysed_in"]["torch_version"] == torch.__version__
               for r in results["optimizers"].values() for run in r["seeds"].values())
    assert results["analysis_environment_differences"] == {}
    assert "## Environment" in (compared / "report.md").read_text()
    assert results["baseline"] == "sgd" and results["config"]["seeds"] == SEEDS
    assert set(results["optimizers"]) == {"sgd", "sam"}
    assert "difference" not in results["optimizers"]["sgd"]
    for opt, r in results["optimizers"].items():
        assert set(r["seeds"]) == {"0", "1", "2"}
        for seed, run in r["seeds"].items():
            assert set(PER_SEED) <= set(run), (opt, seed)
            assert ("density" in run) == (seed == "0")
            assert len(run["eigenvalues"]["eigenvalues"]) == 5 and run["lambda_max"] == run["eigenvalues"]["eigenvalues"][0]
            assert [x["m"] for x in run["m_sharpness"]["results"]] == [4, 16]
            assert len(run["gradcos_over_training"]) == results["config"]["epochs"]
            eos = run["lambda_max_over_training"]
            assert len(eos) == results["config"]["epochs"] and all(e["edge_of_stability"] > 0 for e in eos)
            assert all(("sam_edge_of_stability" in e) == (opt == "sam") for e in eos)
        # every summary is sharpscope.stats.summarize of the per-seed scalars
        for metric, summary in r["summary"].items():
            values = [r["seeds"][str(s)]["scalars"][metric] for s in SEEDS]
            expected = stats.summarize(values, bounds=METRIC_BOUNDS.get(metric)).to_dict()
            assert summary == pytest.approx(expected)
            low, high = METRIC_BOUNDS.get(metric, (-float("inf"), float("inf")))
            assert low <= summary["ci_low"] <= summary["ci_high"] <= high, metric
        assert {"test_acc", "lambda_max", "trace", "surrogate_gap", "m_sharpness_m4"} <= set(r["summary"])
        assert "train_acc_clean" not in r["summary"]  # no label noise
        assert r["surface"]["seed"] == 0 and {"centre_loss", "basin_width"} <= set(r["surface"])
        g = r["gradcos_change"]  # first vs last tracked epoch, paired over seeds
        early = [r["seeds"][str(s)]["gradcos_over_training"][0]["gradcos"] for s in SEEDS]
        late = [r["seeds"][str(s)]["gradcos_over_training"][-1]["gradcos"] for s in SEEDS]
        assert (g["early_epoch"], g["late_epoch"]) == (1, results["config"]["epochs"])
        assert g["early"]["mean"] == pytest.approx(sum(early) / 3)
        assert g["change"]["mean"] == pytest.approx(stats.paired_difference(early, late).mean)
    sam, sgd = results["optimizers"]["sam"], results["optimizers"]["sgd"]
    for metric, d in sam["difference"].items():
        expected = stats.paired_difference([sgd["seeds"][str(s)]["scalars"][metric] for s in SEEDS],
                                           [sam["seeds"][str(s)]["scalars"][metric] for s in SEEDS],
                                           bounds=METRIC_BOUNDS.get(metric))
        assert (d["ci_low"], d["ci_high"]) == pytest.approx((expected.ci_low, expected.ci_high), nan_ok=True)
        assert d["mean"] == pytest.approx(expected.mean) and d["p_value"] == pytest.approx(expected.p_value, nan_ok=True)
        assert d["verdict"] == stats.verdict(expected)
    assert sorted(f.split("/")[-1] for f in results["figures"]) == sorted(FIGURES)


@pytest.mark.slow
def test_quick_runs_are_reported_unconverged_and_their_verdicts_say_so(compared):
    """Issue 23: compare --quick wrote "test accuracy: lower, p = 0.029" for runs at 57 % train
    accuracy with no word that they had not converged."""
    results = json.loads((compared / "results.json").read_text())
    conv = results["convergence"]
    for opt in ("sgd", "sam"):
        for s in SEEDS:
            path = compared / opt / f"seed{s}" / "metrics.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            assert conv["runs"][opt][str(s)] == run_convergence(records)
    assert conv["unconverged"], "4 epochs on 400 examples should not reach 99 % train accuracy"
    assert results["warnings"][0].startswith(f"{len(conv['unconverged'])} of 6 runs have not converged")
    assert all(d["about_unconverged_runs"] for d in results["optimizers"]["sam"]["difference"].values())
    report = (compared / "report.md").read_text()
    assert "runs have not converged" in report and "(unconverged runs) |" in report
    assert conv["definition"] in report and "clipped to that range" in report


@pytest.mark.slow
def test_rerun_reuses_and_conflicting_settings_are_refused(compared, cli):
    before = json.loads((compared / "results.json").read_text())
    code, out, err = cli(["compare", "--quick", "--out", str(compared)])
    assert code == 0 and "[5/6] SGD, seed 2: reused" in err and "(mean of 3)" in out
    after = json.loads((compared / "results.json").read_text())
    assert after["optimizers"]["sam"]["summary"] == before["optimizers"]["sam"]["summary"]
    code, _, err = cli(["compare", "--profile", "quick", "--rho", "0.1", "--out", str(compared), "--no-progress"])
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1


def test_paired_seeds_share_split_label_flips_and_initial_weights(tmp_path):
    """What compare's pairing rests on: for one seed, every optimizer's run starts from the
    same weights on the same training examples with the same flipped labels; another seed
    changes all three."""
    import sharpscope.experiments.compare as cmp
    from sharpscope.train import Callback, train

    seen = {}

    class Record(Callback):
        def __init__(self, key):
            self.key = key

        def on_train_begin(self, state):
            seen[self.key] = ({k: v.clone() for k, v in state.model.state_dict().items()},
                              state.data.x_train.clone(), state.data.y_train.clone(), state.data.y_train_clean.clone())

    config = cmp.CompareConfig(quick=True, optimizers=["sgd", "sam", "asam"], label_noise=0.4, epochs=1, seeds=[0, 1])
    for seed in config.seeds:
        for opt in config.optimizers:
            train(config.train_config(opt, seed), tmp_path / f"{opt}{seed}", callbacks=[Record((opt, seed))])
    for seed in config.seeds:
        weights, x, y, clean = seen[("sgd", seed)]
        assert not torch.equal(y, clean)  # labels were flipped
        for opt in ("sam", "asam"):
            w2, x2, y2, _ = seen[(opt, seed)]
            assert all(torch.equal(weights[k], w2[k]) for k in weights) and torch.equal(x, x2) and torch.equal(y, y2)
    w0, x0, y0, _ = seen[("sgd", 0)]
    w1, x1, y1, _ = seen[("sgd", 1)]
    first = next(iter(w0))
    assert not torch.equal(w0[first], w1[first]) and not torch.equal(y0, y1)


def test_not_a_minimum_is_flagged():
    import sharpscope.experiments.compare as cmp
    config = cmp.CompareConfig(quick=True, seeds=[0, 1])
    statistics = {"sgd": {"summary": {"train_loss": {"mean": 0.009}, "gradient_norm": {"mean": 0.1}}},
                  "sam": {"summary": {"train_loss": {"mean": 0.127}, "gradient_norm": {"mean": 0.2},
                                      "lambda_max_clean": {"mean": 1.0}}}}
    notes = cmp.not_a_minimum_warnings(config, statistics)
    assert len(notes) == 1 and "training loss" in notes[0] and "14x" in notes[0] and "lambda_max_clean" in notes[0]
    statistics["sam"]["summary"]["train_loss"]["mean"] = 0.05
    assert cmp.not_a_minimum_warnings(config, statistics) == []


def test_convergence_definition_on_hand_made_records():
    """Converged: final train accuracy >= 0.99, or the last k = max(1, ceil(E / 4)) epochs
    brought < 10 % of the loss decrease since epoch 1. 8 epochs: k = 2,
    share = (L[6th] - L[8th]) / (L[1st] - L[8th])."""
    def recs(losses, acc):
        return [{"epoch": i + 1, "train_loss": v, "train_acc": acc} for i, v in enumerate(losses)]
    falling = recs([2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6], 0.57)
    r = run_convergence(falling)
    assert not r["converged"] and r["over_epochs"] == 2 and r["late_share"] == pytest.approx(0.2 / 1.4)
    assert run_convergence(recs([2.0, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.6], 0.995))["converged"]  # fits its labels
    flat = run_convergence(recs([2.0, 1.5, 1.2, 1.0, 0.9, 0.80, 0.79, 0.77], 0.7))  # 0.03 / 1.23: levelled off
    assert flat["converged"] and flat["late_share"] == pytest.approx(0.03 / 1.23)
    stall = run_convergence(recs([1.10, 1.09, 1.08, 1.07], 0.34))  # tiny lr: < 1 % a step, but 1/3 of the progress
    assert not stall["converged"] and stall["late_share"] == pytest.approx(1 / 3)
    assert not run_convergence(recs([2.0], 0.5))["converged"]  # one epoch: no trend
    assert not run_convergence(recs([2.0, 1.0], 0.5))["converged"]  # two epochs: the last made all the progress
    assert not run_convergence(recs([1.0, 1.0, 1.1], 0.5))["converged"]  # did not fall
    assert run_convergence(recs([2.0], 1.0))["converged"]
    assert not run_convergence([])["converged"]


def test_differences_are_marked_when_a_run_has_not_converged():
    import sharpscope.experiments.compare as cmp
    config = cmp.CompareConfig(quick=True, seeds=[0, 1, 2])
    scalars = {"sgd": {s: {"test_acc": 0.5 + 0.1 * s} for s in range(3)},
               "sam": {s: {"test_acc": 0.9 + 0.05 * s} for s in range(3)}}
    ok = {"sgd": {0: True, 1: True, 2: True}, "sam": {0: True, 1: True, 2: True}}
    st = cmp._statistics(config, scalars, ok)
    assert st["sam"]["difference"]["test_acc"]["about_unconverged_runs"] is False
    assert st["sam"]["summary"]["test_acc"]["ci_high"] <= 1.0  # 0.9, 0.95, 1.0: t interval reaches 1.074
    ok["sgd"][1] = False
    assert cmp._statistics(config, scalars, ok)["sam"]["difference"]["test_acc"]["about_unconverged_runs"] is True


@pytest.mark.parametrize("seeds,fragment", [("0", "count N"), ("1,1", "twice"), ("a", "count N"), ("-1", "count")])
def test_bad_seeds(cli, tmp_path, seeds, fragment):
    code, _, err = cli(["compare", "--profile", "quick", "--seeds", seeds, "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1


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

    config = cmp.CompareConfig(quick=True, optimizers=["sgd"], seeds=[0])
    with pytest.raises(KeyboardInterrupt, match="rerun"):
        cmp.run_compare(config, tmp_path, callbacks_for=lambda opt: [CtrlC()])
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "sgd" / "seed0" / "checkpoint.pt").is_file()
    results = cmp.run_compare(config, tmp_path)
    assert results["optimizers"]["sgd"]["seeds"]["0"]["final"]["epoch"] == config.epochs


def test_runs_saved_before_a_new_option_existed_are_reused(tmp_path):
    """A checkpoint whose stored config lacks an option added later counts as the default."""
    import sharpscope.experiments.compare as cmp
    from sharpscope.checkpoint import read_checkpoint, save_checkpoint
    from sharpscope.models import build_model
    config = cmp.CompareConfig(quick=True, optimizers=["sgd"], seeds=[0])
    cmp.run_compare(config, tmp_path)
    path = tmp_path / "sgd" / "seed0" / "checkpoint.pt"
    raw = read_checkpoint(path)
    del raw["config"]["sync_perturbation"]  # as written by an older sharpscope
    model = build_model(raw["model_spec"])
    model.load_state_dict(raw["model_state"])
    save_checkpoint(path, model, model_spec=raw["model_spec"],
                    data_spec=raw["data_spec"], optimizer_state=raw["optimizer_state"], config=raw["config"],
                    progress=raw["progress"], rng=raw["rng"], metrics=raw["metrics"])
    assert cmp.run_compare(config, tmp_path)["optimizers"]["sgd"]["seeds"]["0"]["final"]["epoch"] == config.epochs


def test_ctrl_c_on_the_command_line_says_what_was_kept(cli, tmp_path, monkeypatch):
    import sharpscope.experiments.compare as cmp

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt(f"{tmp_path}/sam/seed0 saved mid-run; rerun the same command to continue")

    monkeypatch.setattr(cmp, "run_compare", stopped)
    code, _, err = cli(["compare", "--profile", "quick", "--out", str(tmp_path), "--no-progress"])
    assert code == 130 and err.strip() == (f"sharpscope: interrupted: {tmp_path}/sam/seed0 saved mid-run; "
                                           "rerun the same command to continue")


def test_progress_lines_and_bars_are_numbered(tmp_path):
    """compare says [i/N] on each run's lines, trains under a bar labelled '[i/N] OPT', and
    analyses under the same numbers (seed-major); a rerun reuses every run under its number."""
    import sharpscope.experiments.compare as cmp
    from sharpscope.cli.compare_cmd import numbered_bars

    config = cmp.CompareConfig(quick=True, optimizers=["sgd", "sam"], seeds=[0, 1], **TINY)
    bars = numbered_bars(None, False, 4)
    labels: list[str] = []

    def callbacks_for(opt):
        made = bars(opt)
        labels.extend(c.label for c in made)
        return made

    said: list[str] = []
    cmp._run_all(config, tmp_path, said.append, callbacks_for)
    assert [m for m in said if "training" in m] == [
        "[1/4] SGD, seed 0: training 1 epoch", "[2/4] SAM, seed 0: training 1 epoch",
        "[3/4] SGD, seed 1: training 1 epoch", "[4/4] SAM, seed 1: training 1 epoch"]
    assert labels == ["[1/4] SGD", "[2/4] SAM", "[3/4] SGD", "[4/4] SAM"]
    assert [m for m in said if m.endswith(": lambda_max")] == [
        "[1/4] SGD, seed 0: lambda_max", "[2/4] SAM, seed 0: lambda_max", "[3/4] SGD, seed 1: lambda_max",
        "[4/4] SAM, seed 1: lambda_max"]
    assert [m for m in said if m.endswith(": density")] == ["[1/4] SGD, seed 0: density",
                                                            "[2/4] SAM, seed 0: density"]  # first seed only
    said.clear()
    cmp._run_all(config, tmp_path, said.append, callbacks_for)
    assert said == ["[1/4] SGD, seed 0: reused", "[2/4] SAM, seed 0: reused", "[3/4] SGD, seed 1: reused",
                    "[4/4] SAM, seed 1: reused"]


def test_the_command_says_how_many_runs_first(cli, tmp_path, monkeypatch):
    import sharpscope.experiments.compare as cmp

    def stopped(config, out, say, callbacks_for):
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(cmp, "run_compare", stopped)
    code, _, err = cli(["compare", "--profile", "quick", "--seeds", "2", "--optimizer", "sgd,sam,asam", "--out", str(tmp_path)])
    first = " ".join(err.split("sharpscope: interrupted")[0].split())
    assert code == 130 and first.startswith("compare: 6 runs (3 optimizers x 2 seeds) of ")
