"""Exceptions raised by sharpscope: every error bad input can cause derives from
:class:`SharpscopeError`, which the CLI turns into one line on stderr and exit code 2."""

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
    """The data does not fit the model: labels it has no class score for, or inputs it rejects."""


class ModelSpecError(SharpscopeError, ValueError):
    """A model name or factory spec cannot be turned into a model."""


class CheckpointError(SharpscopeError):
    """A checkpoint file is missing, truncated, foreign, or needs unsafe unpickling."""


class NonFiniteLossError(SharpscopeError, FloatingPointError):
    """A NaN or infinite loss, weight or HVP (training keeps the last good checkpoint)."""


class UnconvergedWarning(UserWarning):
    """An iterative method stopped at its cap short of its tolerance (see its convergence flags)."""


class ZeroGradientWarning(UserWarning):
    """A zero gradient: maxima start from a seeded random point; quantities of SAM's e_hat read NaN."""


class RestartsDisagreeWarning(UserWarning):
    """The worst-case ascent's restarts disagree beyond the stated margin: the best is a lower bound."""


class SampledFisherWarning(UserWarning):
    """A sampled Fisher overestimates its top eigenvalues (E lambda_max(F_S) >= lambda_max(F))."""


class FiniteDifferenceWarning(UserWarning):
    """``hvp_mode="auto"`` found no second derivative and uses finite differences of gradients."""


class DataChangedWarning(UserWarning):
    """The data reloaded for a checkpoint differs from its recorded training-split fingerprint."""
