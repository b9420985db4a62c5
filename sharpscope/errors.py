"""Exceptions raised by sharpscope.

Every error a user can cause with bad input derives from :class:`SharpscopeError`; the
CLI turns any of them into one line on stderr and exit code 2.
"""

from __future__ import annotations


class SharpscopeError(Exception):
    """Base class of every error caused by bad input (as opposed to a bug)."""


class ConfigError(SharpscopeError, ValueError):
    """An option is out of range or inconsistent (rho < 0, label noise outside [0, 1), ...)."""


class MemoryBudgetError(ConfigError):
    """An analysis would not fit in the memory budget it was given (``memory_gb``, ``--memory``):
    raised before its first product, saying what the smallest plan would need."""


class DataError(SharpscopeError, ValueError):
    """A data set is unknown, missing, or its files are malformed."""


class DataMismatchError(DataError):
    """The data does not fit the model it is to be analysed (or trained) with: labels the
    model has no class score for, or inputs of a shape the model rejects."""


class ModelSpecError(SharpscopeError, ValueError):
    """A model name or factory spec cannot be turned into a model."""


class CheckpointError(SharpscopeError):
    """A checkpoint file is missing, truncated, foreign, or needs unsafe unpickling."""


class NonFiniteLossError(SharpscopeError, FloatingPointError):
    """Training met a NaN or infinite loss (the last good checkpoint is kept), or an analysis
    met non-finite weights, a non-finite loss or Hessian-vector product."""


class UnconvergedWarning(UserWarning):
    """An iterative method stopped at its cap before reaching the requested tolerance; its
    result is reported with per-value convergence flags and may be far off."""


class ZeroGradientWarning(UserWarning):
    """The gradient is exactly zero (a minimum, a saddle, a zero-initialised model), so the
    ascent direction rho g / ||g|| is undefined. One rule everywhere: the maxima over the ball
    (worst case, m-sharpness) start their ascent from a seeded random point of the boundary
    instead of e = 0; the quantities defined by SAM's e_hat = rho g / ||g|| itself (surrogate
    gap, SAM gradient cosine) are undefined there and read NaN. Either way this warning says so."""


class RestartsDisagreeWarning(UserWarning):
    """The restarts of the worst-case ascent reached maxima that differ by more than the stated
    relative margin: the ascent finds local maxima, and the reported best is a lower bound on
    the true maximum that more restarts or steps may raise."""


class SampledFisherWarning(UserWarning):
    """The true Fisher estimated with a few sampled labels per example has an unbiased trace but
    overestimates its largest eigenvalues (E lambda_max(F_S) >= lambda_max(F), Jensen): use
    ``mc_samples="exact"`` (the default; the same cost per product) for eigenvalues and densities."""


class FiniteDifferenceWarning(UserWarning):
    """``hvp_mode="auto"`` found no second derivative (a checkpointed or custom backward) and
    computes Hessian-vector products by central differences of gradients instead (relative
    error about 1e-4 of ||H|| ||v|| in float32, :mod:`sharpscope.linalg.finite_difference`)."""


class DataChangedWarning(UserWarning):
    """The data reloaded for a checkpoint differs from the training split recorded in its
    fingerprint (number of examples, input shape, classes, or the contents' hashes): the
    analysis measures the model on data it was not trained on."""
