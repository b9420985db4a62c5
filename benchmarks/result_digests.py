"""Digests of the numbers a fixed set of sharpscope commands computes, to check a refactor
leaves every one of them bit-identical.

Runs ``train`` with tracking, every analysis verb on that run (``info``, ``hessian`` four
ways, ``sharpness`` four ways, ``gradcos``, ``surface`` 1-D / 2-D / auto-range / trajectory,
``interpolate``, ``weights``), ``compare --quick``, a 4-run ``sweep`` and ``correlate`` on
it, each as ``python -m sharpscope --threads 1 VERB ... --deterministic`` in a temporary
folder (about 2.5 minutes of CPU time; 135-330 s of wall time on a shared 2-core machine).
Every file a command writes (JSON, JSONL, CSV, npz, checkpoints) is read back into a
canonical form and hashed: wall times, provenance (versions, platform, git commit, threads)
and absolute paths are dropped (:data:`DROP_KEYS`); every number is kept exactly (``repr``
of floats, the bytes of tensors and arrays). Figures and Markdown/HTML reports are not read:
they render the numbers of the JSON files.

    # store the digests of this checkout (the baseline):
    python benchmarks/result_digests.py --store benchmarks/digests/baseline.json
    # after a change: every digest that differs, with the first differing key and values;
    # exit 1 if any differs
    python benchmarks/result_digests.py --check benchmarks/digests/baseline.json
    # a redesign that renames keys or files: pass when every number of the baseline is
    # still there (per command, whatever its key or file; new numbers and fewer copies of one
    # are reported, not failed)
    python benchmarks/result_digests.py --check benchmarks/digests/baseline.json --numbers
    # another checkout, a subset of the commands, the work folder kept for a look:
    python benchmarks/result_digests.py --repo /tmp/old --store /tmp/old.json --only hessian,compare --keep /tmp/w

``--store FILE`` also writes ``FILE`` with ``.values.json.gz`` in place of ``.json``: the
canonical values, from which ``--check`` shows what differs. The digests hold on the machine
and software that stored them (same CPU instruction set, torch and numpy); ``--check`` says
when the environment differs from the baseline's.

One pin (:data:`PIN`): ``compare`` evaluates its loss surfaces and interpolation in chunks
whose size is picked by timing (``landscape.surface.CHUNK_CANDIDATES``), and the chunk size
moves the loss by rounding (2.3231762647628784 vs 2.323176622390747 at 64 vs 128 examples
per chunk), so under load ``--deterministic`` does not fix those bits. The script runs
``compare`` with a single candidate, which is the largest chunk the timing could pick (and
the one it picked in two unpinned runs here: their results equal the baseline's bit for bit).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "sharpscope-result-digests/1"
REPO = Path(__file__).resolve().parents[1]

#: Keys dropped wherever they occur (JSON, JSONL, CSV columns, checkpoint dicts), with why.
DROP_KEYS: dict[str, str] = {
    "wall_time": "wall-clock seconds",
    "seconds": "wall-clock seconds",
    "epoch_time": "wall-clock seconds",
    "environment": "provenance: versions, platform, CPU, git commit, threads",
    "environments": "provenance",
    "environment_differences": "provenance",
    "trained_in": "provenance (the environment that trained a run)",
    "analysed_in": "provenance (the environment that analysed a run)",
    "measured_in": "provenance (the environment that measured a run)",
    "git_commit": "provenance",
    "git_dirty": "provenance",
    "sharpscope_version": "provenance",
    "torch_version": "provenance",
    "numpy_version": "provenance",
    "python_version": "provenance",
    "platform": "provenance",
    "bytes": "info: the checkpoint's file size, which moves with the provenance strings stored in it",
}
#: Key endings dropped the same way: timings and provenance under another prefix.
DROP_SUFFIXES: dict[str, str] = {
    "_seconds": "wall-clock seconds (train_seconds, lambda_max_seconds, ...)",
    "_time": "wall-clock seconds",
    "per_second": "throughput (points_per_second)",
    "_environment_differences": "provenance",
}
#: Files not read, by suffix.
SKIP_SUFFIXES: dict[str, str] = {
    ".png": "figure: a rendering of numbers digested from the JSON files",
    ".pdf": "figure",
    ".svg": "figure",
    ".html": "report: a rendering of the JSON files",
    ".md": "report: a rendering of results.json, with wall times in its text",
    ".log": "log text, with wall times",
}

#: Run before the CLI for commands with ``pin=True`` (see the module docstring): every loaded
#: sharpscope module holding CHUNK_CANDIDATES gets a single candidate (larger than any data
#: set here, so the chunk is the whole subset: what the timing picks as the largest size).
PIN = """\
import runpy, sys
import sharpscope.landscape
pinned = [m for name, m in list(sys.modules.items())
          if name.startswith("sharpscope.") and hasattr(m, "CHUNK_CANDIDATES")]
for m in pinned:
    m.CHUNK_CANDIDATES = (4096,)
if not pinned:
    print("result_digests: no CHUNK_CANDIDATES to pin; a timed chunk size may flake compare's surfaces",
          file=sys.stderr)
sys.argv[0] = "sharpscope"
runpy.run_module("sharpscope", run_name="__main__", alter_sys=True)
"""

T = "--track"
SMALL = ["--samples", "256"]


@dataclass(frozen=True)
class Command:
    """One CLI command: its name, the verb's arguments (after ``--threads 1``), the commands
    whose outputs it reads, and whether it needs :data:`PIN`."""

    name: str
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()
    pin: bool = False
    deterministic: bool = True


def _c(name: str, *args: str, needs: tuple[str, ...] = ("train",), pin: bool = False,
       deterministic: bool = True) -> Command:
    return Command(name, args, needs, pin, deterministic)


NP = "--no-progress"
COMMANDS: tuple[Command, ...] = (
    _c("train", "train", "--optimizer", "sam", "--epochs", "3", "--n-train", "256", "--seed", "0",
       T, "gradcos,lambda_max,trace,m_sharpness", "--out", "train", NP, needs=()),
    _c("info", "info", "train", "--json", "info.json", deterministic=False),
    _c("hessian", "hessian", "train", "--top-k", "3", "--trace", "--trace-matvecs", "12", "--density", "--runs", "2",
       "--steps", "20", *SMALL, "--json", "hessian.json", NP),
    _c("hessian_per_layer", "hessian", "train", "--top-k", "2", "--per-layer", *SMALL,
       "--json", "hessian_per_layer.json", NP),
    _c("hessian_ggn", "hessian", "train", "--operator", "ggn", "--top-k", "3", "--trace", "--trace-matvecs", "12",
       *SMALL, "--json", "hessian_ggn.json", NP),
    _c("hessian_overlap", "hessian", "train", "--top-k", "2", "--overlap-with", "train/checkpoints/epoch_0002.pt",
       *SMALL, "--json", "hessian_overlap.json", NP),
    _c("sharpness_m", "sharpness", "train", "--m", "4,16", "--rho", "0.05,0.1", "--steps", "2", *SMALL,
       "--json", "sharpness_m.json", NP),
    _c("sharpness_worst", "sharpness", "train", "--measure", "worst", "--m", "64", "--steps", "5", "--restarts", "2",
       *SMALL, "--json", "sharpness_worst.json", NP),
    _c("sharpness_worst_adaptive", "sharpness", "train", "--measure", "worst", "--adaptive", "--norm", "inf",
       "--rho", "0.002", "--m", "128", "--steps", "5", "--restarts", "1", *SMALL,
       "--json", "sharpness_worst_adaptive.json", NP),
    _c("sharpness_average", "sharpness", "train", "--measure", "average", "--adaptive", "--rho", "0.002",
       "--m", "64", "--draws", "10", *SMALL, "--json", "sharpness_average.json", NP),
    _c("gradcos", "gradcos", "train", "--rho", "0.05", *SMALL, "--json", "gradcos.json"),
    _c("surface_1d", "surface", "train", "--dim", "1", "--grid", "-1:1:11", *SMALL, "-b", "256",
       "--out", "surface_1d", "--json", "surface_1d.json", NP),
    _c("surface_2d", "surface", "train", "--dim", "2", "--grid", "-1:1:5", "--orthogonalize", *SMALL, "-b", "256",
       "--out", "surface_2d", "--json", "surface_2d.json", NP),
    _c("surface_auto", "surface", "train", "--dim", "1", "--range", "auto", "--grid", "-1:1:7", "--seed", "3",
       *SMALL, "-b", "256", "--out", "surface_auto", "--json", "surface_auto.json", NP),
    _c("surface_trajectory", "surface", "--trajectory", "train", "--dim", "2", "--grid", "-1:1:5", *SMALL,
       "-b", "256", "--out", "surface_trajectory", "--json", "surface_trajectory.json", NP),
    _c("interpolate", "interpolate", "train/checkpoints/epoch_0001.pt", "train", "--grid", "-0.5:1.5:9", *SMALL,
       "-b", "256", "--out", "interpolate", "--json", "interpolate.json", NP),
    _c("weights", "weights", "train", "--json", "weights.json"),
    _c("compare", "compare", "--quick", "--seeds", "2", "--out", "compare", NP, needs=(), pin=True),
    _c("sweep", "sweep", "--optimizer", "sgd,sam", "--rho", "0.05", "--epochs", "3", "--n-train", "256",
       "--seeds", "2", "--profile", "quick", "--analyses", "eigenvalues,trace,density,m-sharpness,gradcos",
       "--correlate", "--min-train-acc", "0", "--out", "sweep", NP, needs=()),
    _c("correlate", "correlate", "sweep", "--out", "correlate", "--min-train-acc", "0", "--samples", "128",
       "--resamples", "200", "--m", "16,64", "--worst-m", "64",
       "--measures", "lambda_max,trace,m_sharpness,gradcos,worst,worst_adaptive,average,average_adaptive,weights",
       NP, needs=("sweep",)),
)


# ---------------------------------------------------------------------------------------------
# Canonical form


def dropped(key: str) -> str | None:
    """Why ``key`` is dropped, or None when it is kept."""
    if key in DROP_KEYS:
        return DROP_KEYS[key]
    return next((why for end, why in DROP_SUFFIXES.items() if key.endswith(end)), None)


@dataclass
class Canonicalizer:
    """Turns parsed results into a canonical JSON-able tree: dict keys as sorted strings,
    :func:`dropped` keys removed (counted in ``dropped``), ``roots`` (absolute folders) in
    strings replaced by their labels, floats kept as themselves (their ``repr`` is exact), tensors
    and arrays as dtype, shape and the SHA-256 of their bytes."""

    roots: dict[str, str] = field(default_factory=dict)  # absolute path -> label
    dropped: Counter = field(default_factory=Counter)

    def string(self, s: str) -> str:
        for root, label in sorted(self.roots.items(), key=lambda kv: -len(kv[0])):
            s = s.replace(root, label)
        return s

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                key = self.string(str(k))
                if dropped(key) is not None:
                    self.dropped[key] += 1
                    continue
                out[key] = self(v)
            return dict(sorted(out.items()))
        if isinstance(obj, (list, tuple)):
            kept = []
            for v in obj:
                row = _row_named(v)
                if row is not None and dropped(row) is not None:
                    self.dropped[f"{row} (row)"] += 1
                else:
                    kept.append(self(v))
            return kept
        if isinstance(obj, str):
            return self.string(obj)
        if obj is None or isinstance(obj, (bool, int, float)):
            return obj
        return self.other(obj)

    def other(self, obj: Any) -> Any:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return array_record(obj)
        mod = type(obj).__module__
        if mod.startswith("torch"):
            import torch

            if isinstance(obj, torch.Tensor):
                return tensor_record(obj)
            if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
                return str(obj)
        raise TypeError(f"cannot canonicalize a {type(obj).__name__}")


#: Columns or keys that name the quantity of a row (a summary's ``metric`` column): a row
#: whose quantity is a dropped key (``train_seconds``) is dropped whole.
ROW_NAMES = ("metric", "measure")


def _row_named(row: Any) -> str | None:
    """The quantity a record (a dict in a list) is about, when it says so under :data:`ROW_NAMES`."""
    if isinstance(row, dict):
        return next((row[k] for k in ROW_NAMES if isinstance(row.get(k), str)), None)
    return None


def array_record(a: Any) -> dict[str, Any]:
    """A numpy array as dtype, shape, SHA-256 of its C-order bytes and its first values."""
    import numpy as np

    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:
        raise TypeError("object arrays are not results")
    head = [v.item() if isinstance(v, np.generic) else v for v in a.reshape(-1)[:3]]
    return {"__array__": a.dtype.str, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest(),
            "head": head}


def tensor_record(t: Any) -> dict[str, Any]:
    """A torch tensor as dtype, shape, SHA-256 of its C-order bytes and its first values (as
    :func:`array_record`; half-precision tensors hashed through their raw bytes)."""
    import torch

    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.is_floating_point() and t.element_size() == 2 else t.reshape(-1)
    head = t.reshape(-1)[:3].double().tolist() if t.is_floating_point() else t.reshape(-1)[:3].tolist()
    return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest(), "head": head}


def read_csv(text: str) -> dict[str, Any]:
    """A CSV file as its kept columns and rows (cells as the text written)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return {"columns": [], "rows": []}
    header, body = rows[0], rows[1:]
    keep = [i for i, name in enumerate(header) if dropped(name) is None]
    named = [i for i, name in enumerate(header) if name in ROW_NAMES]
    gone = [name for name in header if dropped(name) is not None]
    kept_rows = []
    for r in body:
        row = next((r[i] for i in named if i < len(r) and dropped(r[i]) is not None), None)
        if row is None:
            kept_rows.append([r[i] for i in keep if i < len(r)])
        else:
            gone.append(f"{row} (row)")
    return {"columns": [header[i] for i in keep], "rows": kept_rows, "__dropped__": gone}


def read_file(path: Path) -> Any:
    """A result file parsed (before canonicalization), by its suffix; raises ValueError for
    a suffix it does not read."""
    suffix = path.suffix
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if suffix == ".csv":
        return read_csv(path.read_text())
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {name: _npz_entry(name, z[name]) for name in z.files}
    if suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    raise ValueError(f"no reader for {suffix or path.name}")


def _npz_entry(name: str, a: Any) -> Any:
    """An npz array, except text: a string (parsed JSON for names ending in ``_json``, so its
    times and paths are dropped like any JSON's) or a list of strings."""
    if a.dtype.kind != "U":
        return a
    if a.ndim == 0:
        text = str(a)
        return json.loads(text) if name.endswith("_json") else text
    return a.tolist()


def canonical(path: Path, canon: Canonicalizer) -> Any:
    """The canonical tree of one result file; CSV columns dropped by name are counted."""
    parsed = read_file(path)
    if path.suffix == ".csv":
        for name in parsed.pop("__dropped__"):
            canon.dropped[name] += 1
    return canon(parsed)


def dumps(tree: Any) -> str:
    """The canonical text of a tree: sorted keys, no spaces, floats by ``repr`` (NaN and
    infinities spelled as JSON extensions)."""
    return json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(tree: Any) -> str:
    """SHA-256 of :func:`dumps`."""
    return hashlib.sha256(dumps(tree).encode()).hexdigest()


def numbers(tree: Any) -> Counter:
    """The multiset of the tree's numbers and booleans (as their exact text) and of its tensors
    and arrays (as dtype, shape and hash), whatever their keys: what a change of names or
    layout keeps."""
    out: Counter = Counter()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "__array__" in x or "__tensor__" in x:
                out[f"{x.get('__array__') or x.get('__tensor__')}{x['shape']}:{x['sha256'][:16]}"] += 1
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, bool):
            out[str(x)] += 1
        elif isinstance(x, (int, float)):
            out[repr(x)] += 1

    walk(tree)
    return out


def cell_numbers(tree: Any) -> Any:
    """CSV cells that read as numbers turned into them (for :func:`numbers`)."""
    if isinstance(tree, dict) and set(tree) == {"columns", "rows"}:
        return [[_number(c) for c in row] for row in tree["rows"]]
    return tree


def _number(cell: str) -> Any:
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


MISSING = "<missing>"


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first place (in sorted-key order) where two canonical trees differ: its key path
    and the two values there (``<missing>`` where one side lacks the key); None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}", a.get(k, MISSING), b.get(k, MISSING)
            found = first_difference(a[k], b[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{path} (length)", len(a), len(b)
        return None
    if type(a) is not type(b) or dumps(a) != dumps(b):
        return path or ".", a, b
    return None


def count_differences(a: Any, b: Any) -> int:
    """How many leaves (and missing keys or list items) differ between two canonical trees."""
    if isinstance(a, dict) and isinstance(b, dict):
        return sum(count_differences(a[k], b[k]) if k in a and k in b else 1 for k in set(a) | set(b))
    if isinstance(a, list) and isinstance(b, list):
        return sum(count_differences(x, y) for x, y in zip(a, b)) + abs(len(a) - len(b))
    return int(type(a) is not type(b) or dumps(a) != dumps(b))


# ---------------------------------------------------------------------------------------------
# Running the commands


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def argv(cmd: Command) -> list[str]:
    """The command line of ``cmd`` (``python -m sharpscope``, or :data:`PIN` then the CLI)."""
    head = [sys.executable, "-c", PIN] if cmd.pin else [sys.executable, "-m", "sharpscope"]
    return [*head, "--threads", "1", *cmd.args, *(["--deterministic"] if cmd.deterministic else [])]


def shown(cmd: Command) -> str:
    """The command line as stored and printed."""
    return " ".join(["sharpscope", "--threads", "1", *cmd.args, *(["--deterministic"] if cmd.deterministic else [])]
                    + (["  # with PIN (timed chunk size fixed)"] if cmd.pin else []))


def child_env(repo: Path) -> dict[str, str]:
    """The environment of every command: ``repo`` first on PYTHONPATH, one thread, fixed hash
    seed, no display, and none of the user's SHARPSCOPE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARPSCOPE_")}
    env.update(PYTHONPATH=os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", MPLBACKEND="Agg")
    return env


def selected(only: Iterable[str] | None) -> list[Command]:
    """The commands to run: all, or those named in ``only`` plus what they need, in order."""
    by_name = {c.name: c for c in COMMANDS}
    if only is None:
        return list(COMMANDS)
    want: set[str] = set()
    todo = list(only)
    while todo:
        name = todo.pop()
        if name not in by_name:
            raise SystemExit(f"result_digests: unknown command {name!r}; choose from {', '.join(by_name)}")
        if name not in want:
            want.add(name)
            todo.extend(by_name[name].needs)
    return [c for c in COMMANDS if c.name in want]


def run_all(commands: list[Command], repo: Path, work: Path, timeout: float) -> dict[str, dict[str, Any]]:
    """Runs the commands in ``work``; per command its command line, seconds, outputs
    (relative path -> canonical tree), skipped files and dropped keys."""
    env = child_env(repo)
    work = work.resolve()  # a relative --keep would replace its name in every string
    canon_roots = {root: label for root, label in ((str(work), "<work>"), (str(repo), "<repo>"),
                                                   (str(Path.home()), "<home>")) if len(root) > 1}
    results: dict[str, dict[str, Any]] = {}
    for cmd in commands:
        before = snapshot(work)
        start = time.perf_counter()
        print(f"[{len(results) + 1}/{len(commands)}] {shown(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(argv(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"result_digests: {cmd.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        after = snapshot(work)
        changed = sorted(p for p, st in after.items() if before.get(p) != st)
        canon = Canonicalizer(dict(canon_roots))
        outputs, skipped = {}, {}
        for rel in changed:
            why = SKIP_SUFFIXES.get(Path(rel).suffix)
            if why is None and Path(rel).suffix not in (".json", ".jsonl", ".csv", ".npz", ".pt"):
                why = "not a result format this script reads"
            if why:
                skipped[rel] = why
            else:
                outputs[rel] = canonical(work / rel, canon)
        if not outputs:
            raise SystemExit(f"result_digests: {cmd.name} wrote no result file")
        results[cmd.name] = {"command": shown(cmd), "seconds": round(seconds, 1), "outputs": outputs,
                             "skipped": skipped, "dropped": dict(sorted(canon.dropped.items()))}
        print(f"    {seconds:.1f} s, {len(outputs)} results, {len(skipped)} not read", file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Store and check


def environment() -> dict[str, str]:
    """What the digests depend on besides the code: torch, numpy, python and the CPU kernels."""
    import platform

    import numpy as np
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def values_path(path: Path) -> Path:
    """Where the canonical values of a digest file live."""
    return path.with_name(path.name.removesuffix(".json") + ".values.json.gz")


def command_numbers(outputs: dict[str, Any]) -> Counter:
    """The pooled :func:`numbers` of one command's outputs."""
    pooled: Counter = Counter()
    for tree in outputs.values():
        pooled += numbers(cell_numbers(tree))
    return pooled


def summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The digest file's content: per command its command line, output digests, numbers
    digest, seconds and what was skipped or dropped."""
    commands = {}
    for name, r in results.items():
        pooled = command_numbers(r["outputs"])
        commands[name] = {"command": r["command"], "seconds": r["seconds"],
                          "outputs": {rel: digest(tree) for rel, tree in r["outputs"].items()},
                          "numbers": digest(sorted(pooled.elements())), "n_numbers": sum(pooled.values()),
                          "not_read": r["skipped"], "dropped_keys": r["dropped"]}
    return {"format": FORMAT, "environment": environment(), "drop_keys": DROP_KEYS, "drop_suffixes": DROP_SUFFIXES,
            "not_read": SKIP_SUFFIXES, "pin": PIN, "commands": commands}


def store(path: Path, results: dict[str, dict[str, Any]]) -> None:
    """Writes the digests to ``path`` and the canonical values beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary(results), indent=1, sort_keys=True) + "\n")
    values = {name: r["outputs"] for name, r in results.items()}
    with gzip.GzipFile(values_path(path), "wb", mtime=0) as f:
        f.write(dumps(values).encode())
    print(f"stored {sum(len(r['outputs']) for r in results.values())} digests of {len(results)} commands in {path}")


def load_values(path: Path) -> dict[str, dict[str, Any]] | None:
    """The canonical values stored beside a digest file, or None when they are missing."""
    vp = values_path(path)
    if not vp.exists():
        return None
    with gzip.open(vp, "rt") as f:
        return json.load(f)


def where(tree: Any, token: str, path: str = "", limit: int = 3) -> list[str]:
    """Key paths at which :func:`numbers` finds ``token`` in ``tree`` (at most ``limit``)."""
    found: list[str] = []

    def walk(x: Any, p: str) -> None:
        if len(found) >= limit:
            return
        if isinstance(x, dict) and not ("__array__" in x or "__tensor__" in x):
            for k, v in x.items():
                walk(v, f"{p}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{p}[{i}]")
        elif numbers(x).get(token):
            found.append(p or ".")

    walk(tree, path)
    return found


def short(value: Any, width: int = 100) -> str:
    """A value's canonical text, cut to ``width`` characters."""
    text = MISSING if value is MISSING else dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def compare_outputs(name: str, base: dict[str, Any], now: dict[str, Any], base_values: dict[str, Any] | None,
                    now_values: dict[str, Any]) -> list[str]:
    """Lines naming every output of one command whose digest differs, is missing or is new;
    for those with stored values, the first differing key path, both values and how many
    leaves differ."""
    lines = []
    for rel in sorted(set(base["outputs"]) | set(now["outputs"])):
        old, new = base["outputs"].get(rel), now["outputs"].get(rel)
        if old == new:
            continue
        if new is None:
            lines.append(f"{name}: {rel}: missing (in the baseline, not written now)")
        elif old is None:
            lines.append(f"{name}: {rel}: new (not in the baseline)")
        elif base_values is None or rel not in base_values:
            lines.append(f"{name}: {rel}: digest differs (no stored values to show where)")
        else:
            a, b = base_values[rel], now_values[rel]
            key, x, y = first_difference(a, b) or (".", "?", "?")
            lines.append(f"{name}: {rel}: {count_differences(a, b)} value(s) differ; first at {key}: "
                         f"baseline {short(x)} != now {short(y)}")
    return lines


def compare_numbers(name: str, base: dict[str, Any], now: dict[str, Any], base_values: dict[str, Any] | None,
                    now_values: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether every distinct number of the command's baseline is among its numbers now
    (pooled over its outputs, whatever the keys or files), and lines saying which are missing,
    which appear fewer times (a duplicate under a second name removed?) and which are new."""
    if base["numbers"] == now["numbers"]:
        return True, []
    if base_values is None:
        return False, [f"{name}: its numbers differ (no stored values to say which)"]
    old, new = command_numbers(base_values), command_numbers(now_values)
    missing = [token for token in old if token not in new]
    fewer = [token for token in old if 0 < new[token] < old[token]]
    added = [token for token in new if token not in old]
    lines = []
    if missing:
        examples = []
        for token in missing[:3]:
            paths = [f"{rel}{p}" for rel, tree in base_values.items() for p in where(cell_numbers(tree), token)][:2]
            examples.append(f"{token} at {', '.join(paths)}")
        lines.append(f"{name}: {len(missing)} baseline number(s) not found now, e.g. " + "; ".join(examples))
    if fewer:
        lines.append(f"{name}: {len(fewer)} number(s) appear fewer times than in the baseline, e.g. "
                     + ", ".join(fewer[:5]))
    if added:
        lines.append(f"{name}: {len(added)} number(s) new (not in the baseline), e.g. " + ", ".join(added[:5]))
    return not missing, lines


def check(path: Path, results: dict[str, dict[str, Any]], numbers_only: bool) -> int:
    """Compares ``results`` with the digest file at ``path``; prints what differs and returns
    the exit status: 1 if a digest differs (with ``numbers_only``: if a baseline number is
    missing), else 0."""
    baseline = json.loads(path.read_text())
    if baseline.get("format") != FORMAT:
        raise SystemExit(f"result_digests: {path} is not a {FORMAT} file")
    values = load_values(path)
    now = summary(results)
    if baseline["environment"] != now["environment"]:
        print(f"note: the environment differs from the baseline's ({baseline['environment']} vs "
              f"{now['environment']}): bits may differ by rounding alone")
    failed = False
    for name, cur in now["commands"].items():
        base = baseline["commands"].get(name)
        if base is None:
            print(f"{name}: no baseline for this command")
            continue
        if base["command"] != cur["command"]:
            print(f"{name}: note: the baseline ran `{base['command']}`")
        base_values = None if values is None else values.get(name)
        lines = compare_outputs(name, base, cur, base_values, results[name]["outputs"])
        kept, number_lines = compare_numbers(name, base, cur, base_values, results[name]["outputs"])
        for line in lines + number_lines:
            print(line)
        if lines and kept and not number_lines:
            print(f"{name}: the same numbers: only names or layout changed")
        failed |= (not kept) if numbers_only else bool(lines)
    skipped = sorted(set(baseline["commands"]) - set(now["commands"]))
    if skipped:
        print(f"not run (--only): {', '.join(skipped)}")
    total = sum(len(c["outputs"]) for c in now["commands"].values())
    print(("FAILED" if failed else "OK") + f": {len(now['commands'])} commands, {total} outputs checked"
          + (" (numbers only)" if numbers_only else ""))
    return int(failed)


def main(argv_: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--store", type=Path, metavar="FILE", help="write the digests (and FILE's values) here")
    mode.add_argument("--check", type=Path, metavar="FILE", help="compare with the digests stored here")
    parser.add_argument("--numbers", action="store_true",
                        help="--check: fail only when a baseline number is missing (renamed keys, files and "
                             "new numbers are reported, not failed)")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose sharpscope runs (default: this one)")
    parser.add_argument("--only", help="comma-separated command names (plus the ones they need)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="run in DIR (created, must be empty) and keep it")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args(argv_)
    commands = selected(args.only.split(",") if args.only else None)
    if args.list:
        print("\n".join(f"{c.name}: {shown(c)}" for c in commands))
        return 0
    if args.store is None and args.check is None:
        parser.error("one of --store FILE, --check FILE or --list is required")
    if args.check is not None and not args.check.exists():
        parser.error(f"no digest file {args.check}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):
            parser.error(f"--keep {args.keep} is not empty")
    work = args.keep or Path(tempfile.mkdtemp(prefix="sharpscope-digests-"))
    start = time.perf_counter()
    try:
        results = run_all(commands, args.repo.resolve(), work, args.timeout)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"ran {len(commands)} commands in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.store is not None:
        store(args.store, results)
        return 0
    return check(args.check, results, args.numbers)


if __name__ == "__main__":
    sys.exit(main())
