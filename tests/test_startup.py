"""What a bare ``import sharpscope`` and the CLI's start-up load: submodules on demand, never
matplotlib or scipy before a verb needs them. Each check runs in a fresh interpreter, since
this test process has long imported everything."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

HEAVY = ("matplotlib", "scipy", "sklearn")
# The design's public names; the test also finds every other public module of the package.
SUBMODULES = ("checkpoint", "cli", "data", "distributed", "errors", "hessian", "landscape", "linalg",
              "models", "objective", "optim", "plots", "sharpness", "train")


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADED = f"json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"


def test_bare_import_is_light_and_submodules_resolve_as_attributes():
    found = _fresh(
        "import json, sys\n"
        "import sharpscope as ss\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "cli_loaded = 'sharpscope.cli' in sys.modules\n"
        "import pkgutil\n"
        "found = {m.name for m in pkgutil.iter_modules(ss.__path__) if not m.name.startswith('_')}\n"
        "listed = sorted(found - set(dir(ss)))  # before any access imports (and so binds) a module\n"
        f"resolved = {{n: type(getattr(ss, n)).__name__ for n in sorted(found | set({SUBMODULES!r}))}}\n"
        "print(json.dumps({'heavy': heavy, 'cli_loaded': cli_loaded, 'resolved': resolved, 'unlisted': listed,\n"
        "                  'api': [callable(ss.hessian.eigenvalues), callable(ss.landscape.surface),\n"
        "                          callable(ss.sharpness.m_sharpness), callable(ss.linalg.lanczos)]}))\n")
    assert found["heavy"] == [] and not found["cli_loaded"]
    assert found["unlisted"] == []  # every public module is in dir(sharpscope) from the start
    assert set(SUBMODULES) <= set(found["resolved"])
    assert found["resolved"] == dict.fromkeys(found["resolved"], "module")
    assert all(found["api"])


def test_unknown_attribute_is_still_an_attribute_error():
    import sharpscope as ss
    with pytest.raises(AttributeError, match=r"^module 'sharpscope' has no attribute 'no_such_thing'$"):
        ss.no_such_thing  # noqa: B018
    assert not hasattr(ss, "hessain")
    assert getattr(ss, "__path__")  # ordinary attributes are untouched


@pytest.mark.parametrize("argv", [["info", "/nonexistent/missing.pt"], ["hessian", "/nonexistent/missing.pt"],
                                  ["surface", "/nonexistent/missing.pt"], ["train", "--epochs", "0"]])
def test_cli_start_up_and_early_errors_import_no_plotting_or_scipy(argv):
    """Registering the verbs and refusing bad input must not pay for matplotlib or scipy."""
    found = _fresh(
        "import io, json, sys, contextlib\n"
        "from sharpscope.cli import main\n"
        f"before = {LOADED}\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        f"print(json.dumps({{'before': json.loads(before), 'after': json.loads({LOADED}), 'code': code,\n"
        "                  'err': err.getvalue()}))\n")
    assert found["code"] == 2 and found["err"].startswith("sharpscope: error:"), found["err"]
    assert found["before"] == [] and found["after"] == []


def test_the_check_would_notice_a_heavy_import():
    """Guard against a vacuous pass: the same probe sees matplotlib once a verb's plots are loaded."""
    found = _fresh(f"import json, sys\nimport sharpscope.cli\nimport sharpscope.plots\nprint({LOADED})")
    assert "matplotlib" in found


TORCH_LOADED = "json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"


# (train, compare and sweep --help list the optimizer registry, which imports torch: those pay it)
@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["sharpness", "--help"], ["surface", "--help"],
                                  ["gradcos", "--help"]])
def test_help_and_building_the_app_import_no_torch(argv):
    """``sharpscope --help`` (and a verb's help that needs no torch-backed facts) starts without
    importing torch (0.3 s instead of 1.3 s and more): the package's names, the option help from
    the optimizer registry and the thread count are all imported or set on demand."""
    found = _fresh(
        "import contextlib, io, json, sys, typer\n"
        "import sharpscope, sharpscope.cli\n"
        "typer.main.get_command(sharpscope.cli.app)  # builds every verb's options\n"
        f"built = {TORCH_LOADED}\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        sharpscope.cli.main({argv!r})\n"
        "    except SystemExit as e:\n"
        "        code = e.code\n"
        f"print(json.dumps({{'built': json.loads(built), 'after': json.loads({TORCH_LOADED}), 'code': code,\n"
        "                  'out': out.getvalue()}))\n")
    assert found["built"] == [] and found["after"] == []
    assert found["code"] == 0 and "Usage: sharpscope" in found["out"]


def test_the_check_would_notice_torch():
    """Guard against a vacuous pass: a verb's help that needs the registry does import torch."""
    found = _fresh("import contextlib, io, json, sys\nfrom sharpscope.cli import main\n"
                   "with contextlib.redirect_stdout(io.StringIO()):\n"
                   "    try:\n        main(['train', '--help'])\n    except SystemExit:\n        pass\n"
                   f"print({TORCH_LOADED})")
    assert "torch" in found


def test_the_package_names_resolve_on_demand():
    """``ss.SAM``, ``from sharpscope import load_checkpoint`` and ``import *`` work as before
    though ``import sharpscope`` no longer imports torch."""
    import sharpscope as ss
    import sharpscope.checkpoint
    import sharpscope.optim
    from sharpscope import ModelLoss, load_checkpoint  # noqa: F401

    assert ss.SAM is sharpscope.optim.SAM and ss.load_checkpoint is sharpscope.checkpoint.load_checkpoint
    assert set(ss.__all__) <= set(dir(ss))
    namespace: dict = {}
    exec("from sharpscope import *", namespace)  # noqa: S102
    assert {name for name in ss.__all__} <= set(namespace)
    found = _fresh("import json, sys\nimport sharpscope\n"
                   f"print(json.dumps({{'bare': {TORCH_LOADED}, 'sam': sharpscope.SAM.__module__}}))")
    assert json.loads(found["bare"]) == [] and found["sam"] == "sharpscope.optim.sam"


def test_help_written_when_shown_lists_the_registry_and_the_hvp_modes(cli):
    """The option help that needs torch-backed facts is written when the help is shown: every
    optimizer of the registry (the test's late-registered variant in test_optim_registry) and
    every HVP mode, never the placeholder."""
    from sharpscope.objective import HVP_MODES
    from sharpscope.optim import registry

    code, out, _ = cli(["train", "--help"])
    text = " ".join(out.split())
    assert code == 0 and "written when shown" not in text
    assert all(spec.name in text for spec in registry.specs())
    assert f"SAM radius (default {registry.get('sam').default_rho:g}" in text
    code, out, _ = cli(["hessian", "--help"])
    unwrapped = re.sub(r"(?<=\w)- +(?=\w)", "-", " ".join(out.split()))  # click wraps at hyphens too
    assert code == 0 and f"One of {', '.join(HVP_MODES)}." in unwrapped


def test_threads_are_set_when_the_verb_runs_not_for_its_help(cli):
    import torch

    torch.set_num_threads(2)
    code, _, _ = cli(["--threads", "1", "info", "--help"])
    assert code == 0 and torch.get_num_threads() == 2  # help: nothing set
    code, out, _ = cli(["--threads", "1", "info", "--json", "-"])
    assert code == 0 and json.loads(out)["threads"] == 1 and torch.get_num_threads() == 1


THREADS_ENV = "SHARPSCOPE_THREADS"


def _env(**changes: str | None) -> dict:
    """This process's environment without the thread variables, then ``changes``."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV)}
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


@pytest.mark.parametrize("env,argv,light", [
    ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, [], True),
    ({}, [], True),                                          # sharpscope's default share of the cores
    ({THREADS_ENV: "3"}, ["--threads", "2"], True),          # --threads wins over SHARPSCOPE_THREADS
    ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "1"}, [], False),  # torch's own count: torch must say
])
def test_info_without_torch_records_what_environment_would(env, argv, light):
    """``sharpscope info`` (no checkpoint) starts without importing torch where every field can
    be read off without it, and prints the same record as :func:`provenance.environment` after
    the thread count is configured (a fresh process that imports torch); where it cannot, it
    imports torch and says the same."""
    def fresh(code: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              check=False, env=_env(**env))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    info = fresh("import contextlib, io, json, sys\nfrom sharpscope.cli import main\nout = io.StringIO()\n"
                 "with contextlib.redirect_stdout(out):\n"
                 f"    try:\n        main({[*argv, 'info', '--json', '-']!r})\n    except SystemExit:\n        pass\n"
                 f"print(json.dumps({{'record': json.loads(out.getvalue()), 'torch': {TORCH_LOADED}}}))")
    threads = int(argv[1]) if argv else None
    expected = fresh("import json\nfrom sharpscope.cpu import configure_threads\n"
                     "from sharpscope.provenance import environment\n"
                     f"configure_threads({threads!r})\nprint(json.dumps(environment()))")
    assert (json.loads(info["torch"]) == []) == light
    assert info["record"] == expected


def test_the_dispatch_rule_and_the_planned_thread_count(monkeypatch):
    """torch's x86 dispatch rule on feature flags, and the thread counts worked out without
    torch (None where only torch can tell)."""
    from sharpscope.cpu import default_threads, planned_threads
    from sharpscope.provenance import cpu_capability_from_flags

    assert cpu_capability_from_flags({"avx512vl", "avx512bw", "avx512dq", "fma", "avx2"}) == "AVX512"
    assert cpu_capability_from_flags({"avx512vl", "avx512bw", "avx512f", "fma", "avx2"}) == "AVX2"  # no avx512dq
    assert cpu_capability_from_flags({"avx2", "avx"}) == "DEFAULT" and cpu_capability_from_flags(set()) == "DEFAULT"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert planned_threads() == default_threads() and planned_threads(5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert planned_threads() == 3 and planned_threads(2) == 2
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    assert planned_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    monkeypatch.delenv("MKL_NUM_THREADS")
    assert planned_threads() is None
    monkeypatch.setenv(THREADS_ENV, "4")
    assert planned_threads() == 4
