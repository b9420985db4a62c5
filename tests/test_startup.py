"""What a bare ``import sharpscope`` and the CLI's start-up load: submodules on demand, never
matplotlib or scipy before a verb needs them. Each check runs in a fresh interpreter, since
this test process has long imported everything."""

from __future__ import annotations

import json
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
