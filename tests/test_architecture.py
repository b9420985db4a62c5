"""The house rules of docs/architecture (design.md, "How the house grows"), checked on the source
with ``ast`` rather than trusted to review:

- no module imports a private (``_name``) name of another sharpscope module, nor reaches into
  one as ``module._name`` (a private module such as ``cli/_common.py`` is for its own package);
- the layers cli -> experiments -> train -> analyses -> objective/checkpoint ->
  models/data/linalg/optim -> plots/stats/utilities -> errors: a module never imports a layer
  above its own (lazy imports inside functions count too), and the units of one layer import
  each other without a circle; nothing imports the package root (the version lives in
  ``_version.py``);
- one owner each: the thread count is written only in ``cpu.py``, atomic writes (temp file,
  fsync, rename) live only in ``io.py``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sharpscope"

# The layer of each unit (a top-level module or subpackage of sharpscope), from the design doc:
# cli -> experiments -> analyses -> objective/checkpoint -> models/data/linalg/optim -> plots/stats.
# train sits above the analyses (its tracking callbacks measure the Hessian and m-sharpness
# while training) and below experiments (which train runs). Floor 1 holds the pieces that know
# nothing about networks or training; floor 0 what every module may import.
LAYERS: dict[int, set[str]] = {
    0: {"errors", "_version"},
    1: {"io", "checks", "cpu", "determinism", "distributed", "provenance", "stats", "plots", "plots_html",
        "train_options", "reductions"},  # torch-free: the CLI builds the training options from it
    2: {"batches", "tokens", "vocab_chunks", "data", "models", "linalg", "optim"},
    3: {"objective", "checkpoint", "fd_hvp"},  # fd_hvp: gradients at perturbed weights (finite-difference HVPs)
    4: {"curvature", "hessian", "landscape", "sharpness", "measures", "ascent", "weight_spectra",
        "measure_table",  # the table of measures declares the analyses above; train, experiments read it
        "sharded"},  # Hessian eigenvalues of an FSDP2-sharded model
    5: {"train"},
    6: {"experiments"},
    7: {"cli", "__main__", "<root>"},  # the package root re-exports the API and imports submodules lazily
}
LAYER_OF = {unit: floor for floor, units in LAYERS.items() for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    """The absolute name of the module ``node`` imports from."""
    if not node.level:
        return node.module or ""
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, tree: ast.AST, modules: dict[str, Path]
             ) -> Iterator[tuple[int, str, str | None, str]]:
    """(line, imported sharpscope module, name taken from it or None, local name) per import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, modules)
            if target.split(".")[0] != "sharpscope":
                continue
            for alias in node.names:
                sub, local = f"{target}.{alias.name}", alias.asname or alias.name
                yield (node.lineno, sub, None, local) if sub in modules else (node.lineno, target, alias.name, local)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sharpscope":
                    yield node.lineno, alias.name, None, alias.asname or alias.name


def _private_module_outside_its_package(importer: str, target: str) -> bool:
    """``target`` lies in a private module (``pkg._mod``) and ``importer`` is not inside ``pkg``."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            owner = ".".join(parts[:i])
            return not (importer == owner or importer.startswith(owner + "."))
    return False


def private_crossings(modules: dict[str, Path] = MODULES) -> list[str]:
    """Every ``from X import _name``, ``X._name`` and use of another package's private module."""
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        bound: dict[str, str] = {}  # local name -> the sharpscope module it is bound to
        for line, target, name, local in _imports(module, tree, modules):
            where = f"{module}:{line}"
            if name is not None and _is_private(name):
                found.append(f"{where}: from {target} import {name}")
            if _private_module_outside_its_package(module, target):
                found.append(f"{where}: imports {target}, private to its package")
            if name is None and "." not in local:
                bound[local] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and _is_private(node.attr) and bound[node.value.id] != module):
                found.append(f"{module}:{node.lineno}: {bound[node.value.id]}.{node.attr}")
    return found


def unit_imports() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: [where]} over every import between different units."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, path in MODULES.items():
        for line, target, _, _ in _imports(module, ast.parse(path.read_text(), str(path)), MODULES):
            if _unit(target) != _unit(module):
                edges[_unit(module)][_unit(target)].append(f"{module}:{line}")
    return edges


def test_every_module_has_a_layer():
    units = {_unit(m) for m in MODULES}
    assert units - set(LAYER_OF) == set(), "give the new module a layer in LAYERS (from docs/design.md)"
    assert set(LAYER_OF) - units == set(), "a module in LAYERS is gone: take it out"


def test_no_private_name_crosses_a_module_boundary():
    assert private_crossings() == []


def test_the_checker_sees_private_names_imported_or_reached_into(tmp_path):
    pkg = tmp_path / "sharpscope"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "_hidden.py").write_text("PUBLIC = 1\n")
    (pkg / "lanczos.py").write_text("class _Basis: ...\n_x = 1\n")
    (pkg / "density.py").write_text("from .lanczos import _Basis, __doc__\nfrom . import lanczos\n"
                                    "from .sub._hidden import PUBLIC\ny = lanczos._x + lanczos.__name__\n")
    (pkg / "sub" / "ok.py").write_text("from ._hidden import PUBLIC\nfrom . import _hidden\n")
    modules = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
               for p in pkg.rglob("*.py")}
    assert private_crossings(modules) == ["sharpscope.density:1: from sharpscope.lanczos import _Basis",
                     "sharpscope.density:3: imports sharpscope.sub._hidden, private to its package",
                     "sharpscope.density:4: sharpscope.lanczos._x"]


def test_no_layer_imports_a_layer_above_it():
    upward = [f"{unit} (floor {LAYER_OF[unit]}) imports {target} (floor {LAYER_OF[target]}) at {', '.join(where)}"
              for unit, targets in unit_imports().items() for target, where in targets.items()
              if LAYER_OF[target] > LAYER_OF[unit]]
    assert upward == []


def test_the_generic_floors_know_nothing_about_networks_or_training():
    """design.md: stats, linalg, plots and errors know nothing about networks or training."""
    generic = {"stats", "linalg", "plots", "errors"}
    reach = {u: {t for t in targets if LAYER_OF[t] > 1} for u, targets in unit_imports().items() if u in generic}
    assert {u: t for u, t in reach.items() if t} == {}


def test_nothing_imports_the_package_root():
    """The version comes from sharpscope._version: no arrow back up to ``sharpscope/__init__``."""
    assert {u: w for u, t in unit_imports().items() for r, w in t.items() if r == "<root>"} == {}
    assigned = [m for m, p in MODULES.items() for n in ast.walk(ast.parse(p.read_text()))
                if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in n.targets)]
    assert assigned == ["sharpscope._version"]


def test_units_import_each_other_without_a_circle():
    edges = {u: set(t) for u, t in unit_imports().items()}
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> list[str] | None:
        state[u] = 1
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return path + [u, v]
            if v not in state and (cycle := visit(v, path + [u])):
                return cycle
        state[u] = 2
        return None

    for unit in sorted(edges):
        if unit not in state:
            assert visit(unit, []) is None


def _calls(attr: str) -> list[str]:
    return [f"{m}:{n.lineno}" for m, p in MODULES.items() for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr]


@pytest.mark.parametrize("call", ["set_num_threads", "set_num_interop_threads"])
def test_the_thread_count_has_one_writer(call):
    assert {w.split(":")[0] for w in _calls(call)} <= {"sharpscope.cpu"}


@pytest.mark.parametrize("call", ["mkstemp", "replace"])
def test_atomic_writes_have_one_home(call):
    where = [w for w in _calls(call) if call != "replace" or _is_os_replace(w)]
    assert {w.split(":")[0] for w in where} <= {"sharpscope.io"}


def _is_os_replace(where: str) -> bool:
    module, line = where.split(":")
    return "os.replace(" in MODULES[module].read_text().splitlines()[int(line) - 1]


def test_analysis_provenance_is_a_value_not_module_state(tmp_path):
    """write_json gets what it records from the AnalysisContext load_for_analysis returns."""
    import json

    from sharpscope.cli import _common

    assert not any(k.isupper() and isinstance(v, dict) for k, v in vars(_common).items() if _is_private(k))
    ctx = _common.AnalysisContext(device="cpu", dtype=None)
    ctx.trained_in += [{"world_size": 1}, {"world_size": 2}]
    _common.write_json({"a": 1}, str(tmp_path / "two.json"), ctx)
    _common.write_json({"a": 1}, str(tmp_path / "none.json"))
    two, none = (json.loads((tmp_path / f).read_text()) for f in ("two.json", "none.json"))
    assert list(two) == ["a", "environment", "trained_in"] and two["trained_in"] == ctx.trained_in
    assert list(none) == ["a", "environment"]
