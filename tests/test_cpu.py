"""Thread counts that cannot oversubscribe: the CPUs a process may use and --threads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sharpscope import cpu
from sharpscope.errors import ConfigError


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0])
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1])
    return tmp_path


@pytest.mark.parametrize("v2,v1,want", [("max 100000\n", None, None), ("150000 100000\n", None, 1.5),
                                        (None, ("-1", "100000"), None), (None, ("200000", "100000"), 2.0),
                                        (None, None, None), ("garbage", ("50000", "100000"), 0.5)])
def test_cgroup_quota(tmp_path, v2, v1, want):
    assert cpu.cgroup_cpu_limit(_cgroup(tmp_path, v2, v1)) == want


def test_available_cores_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpu, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": None)
    assert cpu.available_cores() == 4 and cpu.default_threads(jobs=2) == 2 and cpu.default_threads(jobs=8) == 1
    monkeypatch.setattr(cpu, "cgroup_cpu_limit", lambda root="/sys/fs/cgroup": 1.5)
    assert cpu.available_cores() == 2


def test_configure_threads_order_of_choice(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    monkeypatch.setattr(cpu, "available_cores", lambda: 3)
    assert cpu.configure_threads() == 3 and torch.get_num_threads() == 3
    assert cpu.configure_threads(jobs=2) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(cpu.THREADS_ENV, "2")
    assert cpu.configure_threads() == 2 and torch.get_num_threads() == 2
    assert cpu.configure_threads(1) == 1  # the explicit choice wins
    monkeypatch.delenv(cpu.THREADS_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    assert cpu.configure_threads() == 2  # the user's OMP_NUM_THREADS: torch's choice stands
    for bad in ("0", "x", "-3"):
        monkeypatch.setenv(cpu.THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=cpu.THREADS_ENV):
            cpu.configure_threads()
    with pytest.raises(ConfigError):
        cpu.configure_threads(0)


def test_cli_threads_option(cli, restore_threads):
    code, _, err = cli(["--threads", "1", "info", "/nonexistent/missing.pt"])
    assert code == 2 and "no such checkpoint" in err and torch.get_num_threads() == 1
    code, _, err = cli(["--threads", "0", "info", "/nonexistent/missing.pt"])
    assert code == 2 and "--threads must be a positive number" in err


def test_one_module_chooses_and_writes_the_thread_count(monkeypatch, restore_threads):
    """cpu owns the policy: the counts for --deterministic and for sweep's workers, and the one
    writer every other module calls (tests/test_architecture.py checks there is no other)."""
    from sharpscope import determinism

    monkeypatch.delenv(cpu.THREADS_ENV, raising=False)
    monkeypatch.setattr(cpu, "available_cores", lambda: 4)
    assert [cpu.worker_threads(j) for j in (1, 2, 3, 8)] == [4, 2, 1, 1]  # a share of the cores
    assert cpu.worker_threads(2, deterministic=True) == cpu.DETERMINISTIC_THREADS == 1  # not a share
    assert cpu.worker_threads(2, threads=3, deterministic=True) == 3
    assert cpu.deterministic_threads() == 1 and cpu.deterministic_threads(2) == 2
    monkeypatch.setenv(cpu.THREADS_ENV, "3")
    assert cpu.deterministic_threads() == 3  # the user's choice
    assert determinism.DETERMINISTIC_THREADS is cpu.DETERMINISTIC_THREADS
    assert cpu.set_threads(2) == 2 and torch.get_num_threads() == 2
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threads must be a positive number"):
            cpu.set_threads(bad)
        with pytest.raises(ConfigError, match="threads must be a positive number"):
            cpu.deterministic_threads(bad)
    assert torch.get_num_threads() == 2


def test_wait_policy_is_set_before_torch_unless_the_user_chose(monkeypatch):
    """Passive OpenMP waiting, set in the environment only before torch loads its runtime and
    only when the user set none of the waiting variables (issue 24, item 7)."""
    env: dict[str, str] = {}
    assert cpu.prepare_wait_policy(env) == {}  # torch is imported in this process: too late
    monkeypatch.delitem(sys.modules, "torch")
    assert cpu.prepare_wait_policy(env) == cpu.WAIT_POLICY and env == cpu.WAIT_POLICY
    for name in cpu.WAIT_POLICY_VARIABLES:
        mine = {name: "42"}
        assert cpu.prepare_wait_policy(mine) == {} and mine == {name: "42"}


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_the_cli_sets_the_wait_policy_torch_reads(user):
    """What the OpenMP runtime inside torch reports at load (OMP_DISPLAY_ENV) under the CLI:
    sharpscope's policy, or the user's own."""
    env = {k: v for k, v in os.environ.items() if k not in cpu.WAIT_POLICY_VARIABLES}
    env["OMP_DISPLAY_ENV"] = "TRUE"
    if user:
        env["OMP_WAIT_POLICY"] = user
    done = subprocess.run([sys.executable, "-m", "sharpscope", "--threads", "1", "hessian", "/nonexistent/x.pt"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    want = user or cpu.WAIT_POLICY["OMP_WAIT_POLICY"]
    assert f"OMP_WAIT_POLICY = '{want}'" in done.stderr + done.stdout
