"""Topological summaries of grids: minima, merge tree, 0-dimensional sublevel-set persistence.

The reference is an independent brute-force threshold sweep (``scipy.ndimage.label`` of
{z <= t} at every grid value t, tracking births and elder-rule merges), not landscaper:
landscaper's topopy dependency pins numpy < 2, so it is not installed here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from sharpscope.landscape import SurfaceResult
from sharpscope.landscape.topology import local_minima, persistence_pairs, surface_topology


def _structure(ndim: int, connectivity: str) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim if connectivity == "full" else 1)


def reference_pairs(z: np.ndarray, connectivity: str = "full") -> list[tuple[float, float]]:
    """(birth, death) pairs by labelling {z <= t} for every grid value t (non-finite cells never in)."""
    finite = np.isfinite(z)
    structure = _structure(z.ndim, connectivity)
    comps: dict[int, float] = {}  # a cell of each component (flat index) -> its birth
    pairs = []
    for t in np.unique(z[finite]):
        lab, _ = ndimage.label(finite & (z <= t), structure)
        flat = lab.ravel()
        groups: dict[int, list[tuple[float, int]]] = {}
        for cell, birth in comps.items():
            groups.setdefault(int(flat[cell]), []).append((birth, cell))
        labels, first = np.unique(flat, return_index=True)
        new = {}
        for k, cell in zip(labels.tolist(), first.tolist()):
            if k == 0:
                continue
            olds = sorted(groups.get(k, []))
            if not olds:  # a component holding no older one is born at this level
                new[cell] = float(t)
                continue
            for birth, _ in olds[1:]:  # the elder (lowest birth) survives
                pairs.append((birth, float(t)))
            new[olds[0][1]] = olds[0][0]
        comps = new
    return sorted(pairs + [(b, math.inf) for b in comps.values()])


def minimax(z: np.ndarray, a: tuple, b: tuple, connectivity: str = "full") -> float:
    """The lowest level t at which cells a and b are connected in {z <= t}."""
    for t in np.unique(z[np.isfinite(z)]):
        lab, _ = ndimage.label(np.isfinite(z) & (z <= t), _structure(z.ndim, connectivity))
        if lab[a] and lab[a] == lab[b]:
            return float(t)
    return math.inf


def grid2(n: int = 41, lo: float = -2.0, hi: float = 2.0):
    x = np.linspace(lo, hi, n)
    return x, *np.meshgrid(x, x)  # Y varies along axis 0, as SurfaceResult


def test_quadratic_bowl_one_minimum_no_finite_pair():
    x, X, Y = grid2(21)
    z = X ** 2 + 2 * Y ** 2 + 0.3 * X * Y
    t = surface_topology(z)
    assert t.minima == [(10, 10)] and t.n_minima == 1 and t.n_minima_interior == 1
    assert t.pairs == [(z[10, 10], math.inf)] and t.merges == []
    assert t.summary()["mean_depth"] is None and t.summary()["total_persistence"] == 0.0


def test_two_wells_elder_rule_and_exact_saddle():
    x, X, Y = grid2(41)
    z = -1.0 * np.exp(-((X + 1) ** 2 + Y ** 2) / 0.3) - 0.6 * np.exp(-((X - 1) ** 2 + (Y - 0.5) ** 2) / 0.3)
    t = surface_topology(z, axes=(x, x))
    deep, shallow = (20, 10), (25, 30)  # y = 0, x = -1 and y = 0.5, x = 1
    assert t.minima == [deep, shallow] and t.minima_values == [z[deep], z[shallow]]
    (m,) = t.merges
    assert m.child == shallow and m.parent == deep  # the younger (shallower) basin dies
    assert m.birth == z[shallow] and m.death == minimax(z, deep, shallow)
    assert z[m.saddle] == m.death
    assert t.pairs == sorted([(z[deep], math.inf), (z[shallow], m.death)])
    d = t.to_dict()
    assert d["minima"][1]["coords"] == pytest.approx([0.5, 1.0]) and d["pairs"][0][1] is None
    json.dumps(d)  # plain Python types only


def test_hand_made_grid_known_saddle():
    z = np.array([[9, 9, 9, 9, 9, 9, 9],
                  [9, 1, 4, 6, 5, 3, 9],
                  [9, 2, 7, 8, 4, 0, 9],
                  [9, 9, 9, 9, 9, 9, 9]], dtype=float)
    t = surface_topology(z)
    assert t.minima == [(2, 5), (1, 1)]
    (m,) = t.merges
    # lowest crossing from the 1 to the 0: 1 -> 4 -> (6 or 7 or 8) -> ... the 6 (diagonal 4 -> 6 -> 5/4)
    assert (m.child, m.parent, m.saddle, m.birth, m.death) == ((1, 1), (2, 5), (1, 3), 1.0, 6.0)
    assert t.depth_summary() == {"n_pairs": 1, "mean": 5.0, "median": 5.0, "max": 5.0, "total_persistence": 5.0}


def test_egg_crate_interior_and_boundary_minima():
    x = np.linspace(0, 6 * np.pi, 49)  # minima of cos x at pi, 3 pi, 5 pi; maxima on both edges
    X, Y = np.meshgrid(x, x)
    t = surface_topology(np.cos(X) + np.cos(Y))
    assert t.n_minima == 9 and t.n_minima_interior == 9
    assert sorted(t.minima) == [(i, j) for i in (8, 24, 40) for j in (8, 24, 40)]
    assert len(t.merges) == 8 and all(m.death == pytest.approx(0.0, abs=1e-12) for m in t.merges)
    assert t.summary()["mean_depth"] == pytest.approx(2.0)
    y = np.linspace(np.pi, 5 * np.pi, 33)  # the grid's top and bottom rows cut through minima
    X, Y = np.meshgrid(x, y)
    t = surface_topology(np.cos(X) + np.cos(Y))
    assert t.n_minima == 9 and t.n_minima_interior == 3  # edge minima count, and are flagged
    assert sorted(m for m, inside in zip(t.minima, t.minima_interior) if inside) == [(16, 8), (16, 24), (16, 40)]


def test_flat_bottomed_well_counts_once():
    x, X, Y = grid2(31)
    z = np.maximum(X ** 2 + Y ** 2 - 0.5, 0.0)  # a disc of zeros
    t = surface_topology(z)
    first_zero = tuple(int(i) for i in np.argwhere(z == 0)[0])  # lowest flat index
    assert t.minima == [first_zero] and t.merges == [] and t.pairs == [(0.0, math.inf)]
    assert local_minima(z) == [first_zero]


def test_ties_connectivity_and_determinism():
    z = np.array([[0, 5, 0],
                  [5, 0, 5],
                  [5, 5, 5]], dtype=float)  # a diagonal plateau: one minimum under full connectivity
    full = surface_topology(z, connectivity="full")
    assert full.minima == [(0, 0)] and full.merges == [] and full.pairs == [(0.0, math.inf)]
    face = surface_topology(z, connectivity="face")
    assert face.minima == [(0, 0), (0, 2), (1, 1)]
    assert face.pairs == [(0.0, 5.0), (0.0, 5.0), (0.0, math.inf)]
    assert all(m.parent == (0, 0) for m in face.merges)  # equal births: the lower index is the elder
    # two identical wells: the same answer every time, the elder being the lower index
    X, Y = np.meshgrid(np.arange(21.0), np.arange(21.0))
    z = np.minimum((X - 5) ** 2 + (Y - 10) ** 2, (X - 15) ** 2 + (Y - 10) ** 2)  # exact, equal minima
    runs = [surface_topology(z).to_dict() for _ in range(2)]
    assert runs[0] == runs[1]
    (m,) = surface_topology(z).merges
    assert (m.parent, m.child, m.birth, m.death) == ((10, 5), (10, 15), 0.0, 25.0)
    with pytest.raises(ValueError):
        surface_topology(z, connectivity="diagonal")


def test_threshold_drops_noise_pairs():
    z = np.array([[3, 3, 3, 3, 3],
                  [3, 0, 2, 1.9, 3],
                  [3, 3, 3, 3, 3]], dtype=float)
    assert surface_topology(z).n_minima == 2
    t = surface_topology(z, threshold=0.2)  # the 1.9 dip is 0.1 deep
    assert t.n_minima == 1 and t.merges == [] and t.pairs == [(0.0, math.inf)]


def test_nan_cells_are_plus_infinity():
    x, X, Y = grid2(21)
    z = (X - 0.6) ** 2 + Y ** 2
    z[:, 10] = np.nan  # a wall: two regions, each with a minimum that never dies
    t = surface_topology(z)
    assert t.n_nonfinite == 21 and t.n_minima == 2 and t.merges == []
    assert [d for _, d in t.pairs] == [math.inf, math.inf]
    assert t.minima == [(10, 13), (10, 9)]  # (x = 0.6, y = 0) and the wall's left side
    assert [p[1] for p in t.to_dict()["pairs"]] == [None, None]
    z[10, 13] = np.inf  # the minimum cell itself: its neighbours take over
    assert (10, 13) not in surface_topology(z).minima and surface_topology(z).n_minima == 2
    assert surface_topology(np.full((3, 3), np.nan)).pairs == []


def test_three_d_two_wells():
    x = np.linspace(-1.5, 1.5, 13)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    z = -np.exp(-((X + 0.75) ** 2 + Y ** 2 + Z ** 2) / 0.2) - 0.5 * np.exp(-((X - 0.75) ** 2 + Y ** 2 + Z ** 2) / 0.2)
    t = surface_topology(z)
    assert t.minima == [(3, 6, 6), (9, 6, 6)]
    (m,) = t.merges
    assert m.child == (9, 6, 6) and m.death == minimax(z, (3, 6, 6), (9, 6, 6))
    assert t.pairs == reference_pairs(z)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("connectivity", ["full", "face"])
def test_agrees_with_threshold_sweep_reference(seed, connectivity):
    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.normal(size=(30, 26)), 2.0)
    if seed % 2:
        z[rng.random(z.shape) < 0.05] = np.nan
    assert persistence_pairs(z, connectivity) == reference_pairs(z, connectivity)
    ties = rng.integers(0, 6, size=(15, 12)).astype(float)  # many equal values
    assert persistence_pairs(ties, connectivity) == reference_pairs(ties, connectivity)
    cube = ndimage.gaussian_filter(rng.normal(size=(9, 8, 7)), 1.0)
    assert persistence_pairs(cube, connectivity) == reference_pairs(cube, connectivity)


def test_strict_minima_match_the_neighbourhood_definition():
    rng = np.random.default_rng(7)
    z = ndimage.gaussian_filter(rng.normal(size=(25, 25)), 1.5)  # no ties
    padded = np.pad(z, 1, constant_values=np.inf)
    strict = z < ndimage.minimum_filter(padded, footprint=np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]]),
                                        mode="constant", cval=np.inf)[1:-1, 1:-1]
    assert sorted(map(tuple, np.argwhere(strict).tolist())) == sorted(local_minima(z))


def test_surface_result_topology_and_json():
    x, X, Y = grid2(11, -1, 1)
    res = SurfaceResult(xs=x, ys=x, loss=(X - 0.4) ** 2 + Y ** 2, accuracy=np.zeros_like(X), kind="random",
                        options={}, n_examples=1, wall_time=1.0)
    d = res.to_dict()
    assert d["topology"]["n_minima"] == 1 and d["topology"]["minima"][0]["coords"] == pytest.approx([0.0, 0.4])
    json.dumps(d)
    one_d = SurfaceResult(xs=x, ys=None, loss=x ** 2, accuracy=x * 0, kind="random", options={}, n_examples=1,
                          wall_time=1.0)
    assert "topology" not in one_d.to_dict() and one_d.topology().n_minima == 1


def test_report_line_mentions_the_minima():
    from sharpscope.experiments.report import _first_seed_lines
    surf = {"seed": 0, "centre_loss": 0.1, "loss_increase_at_radius": {"0.5": 0.2}, "basin_width": 1.0,
            "topology": {"n_minima": 2, "mean_depth": 0.25}}
    (line,) = _first_seed_lines({"optimizers": {"sam": {"surface": surf}}})
    assert line.endswith("2 local minima, mean saddle-minimum depth 0.25")
    del surf["topology"]  # results written before the topology existed
    assert _first_seed_lines({"optimizers": {"sam": {"surface": surf}}})[0].endswith("basin width 1")


def test_surface_cli_json_has_topology(tmp_path, cli):
    from sharpscope.train import TrainConfig, train
    train(TrainConfig(optimizer="sgd", model="mlp", n_train=100, epochs=1, batch_size=50), tmp_path / "run")
    code, out, err = cli(["surface", str(tmp_path / "run"), "--grid", "-1:1:5", "--samples", "50",
                          "--out", str(tmp_path / "s"), "--json", "-", "--no-progress"])
    assert code == 0, err
    report = json.loads(out[out.index("{"):])
    topo = report["topology"]
    assert topo["shape"] == [5, 5] and topo["n_minima"] >= 1 and topo["connectivity"] == "full"
    assert "local minima" in err and "saddle-minimum depth" in err
    assert json.loads((tmp_path / "s" / "surface_2d.json").read_text())["topology"] == topo
