"""The maths the surface CLI used to do itself, now in sharpscope.landscape (issue 24, item 5):
``random_directions`` (seeds s, s + 1, ...; optional Gram-Schmidt), ``trajectory_grid`` (the
path's range plus a margin) and ``auto_grid`` (``auto_range`` and the grid it gives), each
checked against the construction the CLI used, bit for bit, and against its definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sharpscope.landscape as ls
from sharpscope.errors import ConfigError
from sharpscope.landscape.directions import dot


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("orthogonal", [False, True])
@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_random_directions_are_the_clis_directions_bit_for_bit(orthogonal, dir_type):
    model, seed = _model(), 7
    got = ls.random_directions(model, 3, seed=seed, orthogonal=orthogonal, norm="filter", ignore="biasbn",
                               dir_type=dir_type)
    # what surface_command built before issue 24
    d = [ls.random_direction(model, norm="filter", ignore="biasbn", seed=seed + i, dir_type=dir_type)
         for i in range(3)]
    if orthogonal:
        d[1] = ls.orthogonalize(d[1], d[0])
        d[2] = ls.orthogonalize(ls.orthogonalize(d[2], d[0]), d[1])
    assert all(_same(a, b) for a, b in zip(got, d))
    assert len(got) == 3


def test_orthogonal_random_directions_are_orthogonal_and_the_first_is_as_drawn():
    model = _model()
    d = ls.random_directions(model, 3, seed=1, orthogonal=True)
    assert _same(d[0], ls.random_direction(model, seed=1))
    for i in range(3):
        for j in range(i):
            # float32 entries: |cos| at the rounding level of a few hundred products
            assert abs(dot(d[i], d[j])) / (dot(d[i], d[i]) * dot(d[j], d[j])) ** 0.5 < 1e-6


def test_the_examples_seeds_one_and_two():
    model = _model()
    d1, d2 = ls.random_directions(model, 2, seed=1)
    assert _same(d1, ls.random_direction(model, seed=1)) and _same(d2, ls.random_direction(model, seed=2))
    with pytest.raises(ConfigError):
        ls.random_directions(model, 0)


def test_trajectory_grid_spans_the_path_plus_a_fifth_each_side():
    path = np.array([[-3.0, 0.5], [-1.0, 0.25], [0.0, 0.0]])
    xs, ys = ls.trajectory_grid(path)
    assert len(xs) == len(ys) == 31
    # x: range 3, pad 0.6 (+1e-6); y: range 0.5, pad 0.1 (+1e-6); ends at 6 significant digits
    assert xs[0] == pytest.approx(-3.600001, abs=5e-6) and xs[-1] == pytest.approx(0.600001, abs=5e-6)
    assert ys[0] == pytest.approx(-0.100001, abs=5e-7) and ys[-1] == pytest.approx(0.600001, abs=5e-7)
    assert (path[:, 0] > xs[0]).all() and (path[:, 0] < xs[-1]).all()
    # the CLI's text round trip, bit for bit
    lo, hi = path.min(0), path.max(0)
    pad = 0.2 * (hi - lo) + 1e-6
    assert np.array_equal(xs, ls.parse_grid(f"{lo[0] - pad[0]:.6g}:{hi[0] + pad[0]:.6g}:31"))
    assert np.array_equal(ys, ls.parse_grid(f"{lo[1] - pad[1]:.6g}:{hi[1] + pad[1]:.6g}:31"))


def test_auto_grid_is_auto_range_spread_over_the_given_points():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    directions = ls.random_directions(model, 2, seed=3, ignore="none")
    rng, axes = ls.auto_grid(model, F.cross_entropy, data, directions, [np.zeros(5), np.zeros(7), None],
                             factor=1.5, max_extent=50.0)
    want = ls.auto_range(model, F.cross_entropy, data, directions, 1.5, max_extent=50.0)
    assert rng.extents == want.extents
    assert len(axes) == 3 and axes[2] is None
    assert np.array_equal(axes[0], np.linspace(-want.extents[0], want.extents[0], 5))
    assert np.array_equal(axes[1], np.linspace(-want.extents[1], want.extents[1], 7))
