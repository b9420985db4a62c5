"""Options declared once (issue 24, item 4): every training option is generated from
TrainConfig's field metadata (sharpscope.train_options) onto train, compare and sweep with the
same help; one name means one thing on every verb; renamed options keep their old spelling for
one release with a one-line notice."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from sharpscope.cli import app
from sharpscope.cli._app import shown_help
from sharpscope.cli._options import COMPARE_LIST_HELP, COMPARE_OWNED, SWEEP_LIST_HELP, VERB_OWNED
from sharpscope.train import TrainConfig
from sharpscope.train_options import TRAIN_OPTIONS

VERBS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _params(verb: str) -> dict[str, object]:
    return {p.name: p for p in VERBS[verb].params}


def _visible_flags(verb: str) -> dict[str, str]:
    """flag -> help of every option ``verb`` shows in --help."""
    return {opt: shown_help(p.help) for p in VERBS[verb].params if not getattr(p, "hidden", False)
            for opt in [*p.opts, *p.secondary_opts]}


def test_every_trainconfig_field_has_its_option_metadata_and_default():
    for f in dataclasses.fields(TrainConfig):
        option = f.metadata["cli"]
        assert option is TRAIN_OPTIONS[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        assert default == option.default, f.name
    assert set(TRAIN_OPTIONS) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(TrainConfig)])
def test_every_training_option_is_on_train_compare_and_sweep_with_the_same_help(field):
    option = TRAIN_OPTIONS[field]
    train = _params("train")[field]
    assert train.opts[0] == option.flags[0].split("/")[0]
    base_help = shown_help(train.help)
    assert base_help and (option.help == base_help or option.registry_help)
    for verb, owned in (("compare", {**VERB_OWNED, **COMPARE_OWNED}), ("sweep", VERB_OWNED)):
        params = _params(verb)
        if field in owned:  # set by the verb itself (the seeds, the analysis profile; compare's own --rho)
            assert field == "rho" or field not in params, (verb, field)
            continue
        p = params[field]
        assert p.opts == train.opts, (verb, field)
        assert shown_help(p.help) in (base_help, base_help + SWEEP_LIST_HELP, base_help + COMPARE_LIST_HELP), (verb, field)


def test_compare_and_sweep_take_the_options_they_lacked():
    compare, sweep = _visible_flags("compare"), _visible_flags("sweep")
    for flag in ("--device", "--lr", "--batch-size", "--optimizer", "--profile", "--momentum", "--amp"):
        assert flag in compare, flag
    for flag in ("--device", "--lr", "--nesterov", "--label-smoothing", "--optimizer-opt"):
        assert flag in sweep, flag
    helps = {_visible_flags(v)["--label-noise"] for v in ("train", "compare")}
    assert len(helps) == 1  # one declaration, one help text (sweep adds only "a comma-separated list")
    assert _visible_flags("sweep")["--label-noise"] == helps.pop() + SWEEP_LIST_HELP


def test_one_name_means_one_thing():
    """--steps, --norm (but on surface, h11's direction normalization), --plot-dir, --optimizers
    and --quick are gone from every --help; --eta is ASAM's training offset only."""
    for verb in VERBS:
        flags = _visible_flags(verb)
        for old in ("--steps", "--plot-dir", "--optimizers", "--quick"):
            if verb in ("surface", "interpolate") and old == "--plot-dir":
                continue
            assert old not in flags, (verb, old)
        if verb != "surface":
            assert "--norm" not in flags, verb
        if "--eta" in flags:
            assert verb in ("train", "compare", "sweep") and flags["--eta"].startswith(TRAIN_OPTIONS["eta"].help)
    assert "--ascent-steps" in _visible_flags("sharpness") and "--slq-steps" in _visible_flags("hessian")
    assert "--adaptive-eta" in _visible_flags("sharpness")
    for verb in ("hessian", "sharpness"):
        assert _visible_flags(verb)["--out"].startswith("Folder for figures")


def _notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sharpscope: notice:")]


@pytest.mark.parametrize("args, old, new", [
    (["hessian", "/nonexistent/missing.pt", "--steps", "20"], "--steps", "--slq-steps"),
    (["hessian", "/nonexistent/missing.pt", "--plot-dir", "/tmp"], "--plot-dir", "--out"),
    (["sharpness", "/nonexistent/missing.pt", "--steps", "3"], "--steps", "--ascent-steps"),
    (["sharpness", "/nonexistent/missing.pt", "--norm", "inf"], "--norm", "--p"),
    (["sharpness", "/nonexistent/missing.pt", "--eta", "0.1"], "--eta", "--adaptive-eta"),
    (["sharpness", "/nonexistent/missing.pt", "--plot-dir", "/tmp"], "--plot-dir", "--out"),
    (["compare", "--optimizers", "sgd,adam", "--out", "{tmp}"], "--optimizers", "--optimizer"),
])
def test_old_spelling_works_with_one_notice_line(cli, tmp_path, args, old, new):
    code, _, err = cli([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2  # the input is read with the old spelling, then refused for what it is
    verb = args[0]
    assert _notices(err) == [f"sharpscope: notice: {old} on {verb} is now {new}; the old spelling goes in the "
                             "next release"]
    assert "adam" in err if verb == "compare" else "missing.pt" in err


def test_old_and_new_spelling_together_are_refused(cli):
    code, _, err = cli(["hessian", "/nonexistent/missing.pt", "--steps", "20", "--slq-steps", "30"])
    assert code == 2 and "--steps is the old spelling of --slq-steps" in err


def test_new_names_reach_the_runs(cli, tmp_path, monkeypatch):
    """compare's and sweep's training options become the runs' TrainConfig fields; compare
    --quick is --profile quick."""
    from sharpscope.experiments import compare, sweep

    seen = {}

    def fake_compare(config, out, **kwargs):
        seen["compare"] = config
        raise KeyboardInterrupt("stop")

    def fake_sweep(config, out, **kwargs):
        seen["sweep"] = config
        raise KeyboardInterrupt("stop")

    monkeypatch.setattr(compare, "run_compare", fake_compare)
    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    code, _, err = cli(["compare", "--optimizer", "sgd,sam", "--lr", "0.05", "--batch-size", "32", "--device",
                        "auto", "--quick", "--seeds", "1", "--out", str(tmp_path / "c"), "--no-progress"])
    assert code == 130 and len(_notices(err)) == 1
    config = seen["compare"]
    assert config.quick and config.train_options == {"lr": 0.05, "batch_size": 32, "device": "auto"}
    run = config.train_config("sam", 0)
    assert (run.lr, run.batch_size, run.device, run.rho) == (0.05, 32, "auto", 0.05)
    code, _, err = cli(["sweep", "--lr", "0.05,0.1", "--device", "auto", "--checkpoint-every", "2", "--nesterov",
                        "true,false", "--rho", "0.1", "--seeds", "1", "--out", str(tmp_path / "s")])
    assert code == 130 and _notices(err) == []
    config = seen["sweep"]
    assert list(config.grid) == ["optimizer", "rho", "lr", "nesterov"]  # the order run names had before
    assert config.grid["lr"] == [0.05, 0.1] and config.grid["nesterov"] == [True, False]
    assert config.base["device"] == "auto" and config.base["checkpoint_every"] == 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sharpscope.train import train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(optimizer="sam", model="mlp", model_kwargs={"hidden": [16]}, n_train=200, epochs=1,
                      batch_size=50, keep_snapshots=False), out)
    return out


@pytest.mark.parametrize("verb, old, new", [
    ("sharpness", ["--measure", "worst", "--adaptive", "--m", "32", "--rho", "0.01", "--steps", "3", "--norm", "inf",
                   "--eta", "0.1", "--restarts", "1", "--plot-dir"],
     ["--measure", "worst", "--adaptive", "--m", "32", "--rho", "0.01", "--ascent-steps", "3", "--p", "inf",
      "--adaptive-eta", "0.1", "--restarts", "1", "--out"]),
    ("hessian", ["--top-k", "1", "--density", "--runs", "1", "--steps", "7", "--plot-dir"],
     ["--top-k", "1", "--density", "--runs", "1", "--slq-steps", "7", "--out"]),
])
def test_old_and_new_spellings_give_the_same_numbers(cli, run, tmp_path, verb, old, new):
    import json

    reports = {}
    for name, args in (("old", old), ("new", new)):
        code, out, err = cli([verb, str(run), "--samples", "64", *args, str(tmp_path / name), "--json", "-",
                              "--no-progress"])
        assert code == 0, err
        assert len(_notices(err)) == (sum(a in ("--steps", "--norm", "--eta", "--plot-dir") for a in old)
                                      if name == "old" else 0)
        reports[name] = _numbers(json.loads(out))
    assert reports["old"] == reports["new"]


def _numbers(obj: object) -> object:
    """A report without what differs between two runs of one command: times, environment, figure paths."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()
                if k not in ("environment", "trained_in", "wall_time", "seconds", "figures")}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


ANALYSIS_VERBS = ("hessian", "sharpness", "gradcos", "surface", "interpolate", "weights", "correlate")
# correlate measures a fixed subset (512 by default) of every run and says which run it measures.
VERB_OWN_INPUTS = {"correlate": {"samples", "progress"}}


@pytest.mark.parametrize("verb", ANALYSIS_VERBS)
def test_analysis_verbs_declare_the_shared_inputs_once(verb):
    """The inputs every analysis verb shares are generated from one table (cli/_inputs.py):
    the command's own signature holds none of them, and each shared option has the table's
    flag and help on every verb (the seed's help says what the verb seeds)."""
    import inspect

    from sharpscope.cli import _inputs

    own = inspect.signature(inspect.unwrap(VERBS[verb].callback), follow_wrapped=False).parameters
    assert set(own) & set(_inputs.INPUTS) == VERB_OWN_INPUTS.get(verb, set()), verb
    assert "inputs" in own
    params = _params(verb)
    shared = [name for name in params if name in _inputs.INPUTS and name not in VERB_OWN_INPUTS.get(verb, ())]
    assert shared == [name for name in _inputs.INPUTS if name in shared]  # the table's order, after the own
    assert list(params)[-len(shared):] == shared
    for name in shared:
        table = _inputs.INPUTS[name][1]
        if name not in ("seed", "json_out", "pdf"):  # a verb's own help (seed) or its kind of output
            assert params[name].help == table.help and params[name].opts == list(table.param_decls or [f"--{name}"])

