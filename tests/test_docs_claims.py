"""Numbers and statements in README.md, BENCHMARKS.md and .ci/run that the code decides
(issue 23.11): each is read from the text and compared with what the code does."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_the_digits_split_the_docs_state_is_the_codes():
    from sharpscope.data import load_dataset
    data = load_dataset("digits")
    n_train, n_test = len(data.x_train), len(data.y_test)
    assert (n_train, n_test) == (1438, 359)
    for path in DOCS:
        # every 1,4xx count of examples is the training split (1,4xx tests, runs, ... are other counts)
        for m in re.finditer(r"\b(1,4\d\d)\b(?!\s+(?:tests|runs|seconds|s\b|lines|parameters))", _text(path)):
            assert int(m.group(1).replace(",", "")) == n_train, (path.name, m.group(0))


def test_the_family_accuracy_range_in_the_readme_is_the_tables():
    """README: 'Each reaches LO-HI % test accuracy', the extremes of docs/sam-family.md's table."""
    table = _text(ROOT / "docs" / "sam-family.md")
    block = table[table.index("| optimizer | seed 0 | seed 1 | seed 2 |"):]
    rows = [line for line in block.splitlines()[2:] if line.startswith("|")]
    values = [float(v) for row in rows[:6] for v in row.strip("|").split("|")[1:]]
    assert len(values) == 18
    lo, hi = 100 * min(values), 100 * max(values)
    m = re.search(r"Each reaches ([\d.]+)-([\d.]+) % test accuracy", _text(ROOT / "README.md"))
    assert m and (float(m.group(1)), float(m.group(2))) == (round(lo, 2), round(hi, 2)), (m and m.group(0), lo, hi)


def test_vectorized_m_sam_is_the_default_and_benchmarks_says_so():
    from sharpscope.optim import sam_step
    assert inspect.signature(sam_step).parameters["vectorize"].default is None  # vmap whenever it can
    assert "has not been written yet" not in _text(ROOT / "BENCHMARKS.md")


def test_the_defaults_table_names_its_script_and_the_defaults_it_states_are_the_code_s():
    from sharpscope.train import TrainConfig
    text = _text(ROOT / "BENCHMARKS.md")
    section = text[text.index("## Training time and accuracy of the defaults"):]
    section = section[:section.index("\n## ", 1)]
    assert "benchmarks/bench_defaults.py" in section and (ROOT / "benchmarks" / "bench_defaults.py").is_file()
    c = TrainConfig()
    assert (c.data, c.model, c.epochs, c.batch_size, c.lr, c.schedule, c.momentum, c.weight_decay,
            TrainConfig(optimizer="sam").effective_rho) == ("digits", "cnn", 40, 64, 0.1, "cosine", 0.9, 5e-4, 0.05)
    assert "digits, CNN" in section and "40 epochs, batch 64, lr 0.1 cosine, momentum 0.9, weight decay 5e-4, rho 0.05" \
        in " ".join(section.split())


def test_ci_installs_curvlinops_and_does_not_claim_to_choose_the_torch_build():
    ci = _text(ROOT / ".ci" / "run")
    commands = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any("--no-deps" in line and "curvlinops-for-pytorch" in line for line in commands)
    assert "installs the CPU torch build" not in ci
