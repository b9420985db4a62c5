"""Loss landscapes (Li et al. 2018; Goodfellow et al. 2015): directions (random, Hessian, trajectory
PCA), 1-, 2- and 3-D surfaces, interpolation, and their topology."""

from .directions import (DIR_TYPES, IGNORES, NORMS, Direction, normalize_direction, orthogonalize,
                         random_direction, random_directions, restrict, scale_to_norm, state_buffer_names)
from .extent import AutoRange, PathProjection, auto_grid, auto_range, project_snapshots
from .eigen import HessianDirections, eigenvector_directions, hessian_directions
from .surface import SurfaceResult, interpolate, load_directions, parse_grid, surface
from .metrics import MetricFn, import_metric
from .topology import SurfaceTopology, surface_topology
from .trajectory import TrajectoryDirections, trajectory_directions, trajectory_grid

__all__ = ["Direction", "NORMS", "IGNORES", "DIR_TYPES", "random_direction", "normalize_direction", "orthogonalize",
           "scale_to_norm", "state_buffer_names", "surface", "interpolate", "parse_grid", "load_directions",
           "SurfaceResult", "trajectory_directions", "TrajectoryDirections", "plane_directions",
           "hessian_directions", "eigenvector_directions", "HessianDirections",
           "SurfaceTopology", "surface_topology", "auto_range", "AutoRange", "project_snapshots",
           "PathProjection", "random_directions", "auto_grid", "trajectory_grid", "restrict", "MetricFn",
           "import_metric"]


def plane_directions(model_a, model_b, model_c) -> list[Direction]:
    """Affine plane through three models: A at (0, 0), B at (1, 0), C at (0, 1); the
    directions are B - A and C - A (centre the surface on A)."""
    from .directions import difference
    pa = dict(model_a.named_parameters())
    return [difference(dict(model_b.named_parameters()), pa), difference(dict(model_c.named_parameters()), pa)]
