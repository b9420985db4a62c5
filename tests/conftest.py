"""Shared test fixtures."""

from __future__ import annotations

import pytest

from sharpscope.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: ``code, stdout, stderr = cli([...])``."""
    def run(args: list[str]) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(args)
        out = capsys.readouterr()
        return info.value.code, out.out, out.err
    return run


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """--threads, --deterministic and configure_threads set process-wide torch state (and
    sharpscope.cpu's record of the user's choice): each test starts from the same."""
    import torch

    from sharpscope import cpu

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), dict(cpu._CHOSEN))
    yield
    torch.set_num_threads(before[0])
    torch.use_deterministic_algorithms(before[1])
    cpu._CHOSEN.clear()
    cpu._CHOSEN.update(before[2])


# Issue 23.10: no test runs forever. The slowest tests take about a minute alone; on a loaded
# 2-core machine a few times that. Multi-rank tests fail much sooner (tests/_ranks.py).
TEST_LIMIT_S = 900


@pytest.fixture(autouse=True)
def _per_test_limit(request):
    """Raise TimeoutError in a test still running after TEST_LIMIT_S seconds (SIGALRM, so
    only where it exists and pytest runs tests in the main thread; fixtures of wider scope
    are set up before it starts)."""
    import signal
    import threading

    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"{request.node.nodeid} ran past the per-test limit of {TEST_LIMIT_S} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped where torch sees no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_suite.sh runs these where one is)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
