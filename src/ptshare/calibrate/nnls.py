"""Non-negative least squares: min ||A x - b|| subject to x >= 0, and what the fit reports of it.

A cost per event cannot be negative, and an unconstrained fit over correlated event counts (a
write fault always allocates a page; a PTE table comes with every 512 PTEs) happily trades a
large positive cost for a negative one.  The solver is ``scipy.optimize.nnls`` (the active-set
method of Lawson and Hanson, *Solving Least Squares Problems*, 1974, chapter 23); this module
scales the columns for it and turns its failure to converge into an error.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls as _scipy_nnls

from ..errors import PtshareError

# scipy's default limit is 3n iterations; the active-set method rarely needs more than n, and a
# problem that needs more than this is degenerate enough to be worth an error rather than a guess.
MAX_ITER_PER_COLUMN = 50


class NoConvergence(PtshareError):
    """The least-squares solver did not converge: the samples cannot be fitted as they are."""


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The x >= 0 that minimises ||a @ x - b||.

    Columns are scaled to unit norm first (event counts range from 1 fork to millions of PTEs), so
    the solver's tolerances mean the same for every column; a column of zeros gets x = 0.  Raises
    :class:`NoConvergence` if the solver stops at its iteration limit.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"nnls needs a matrix and a vector of as many rows, not {a.shape} and {b.shape}")
    norms = np.linalg.norm(a, axis=0)
    usable = norms > 0
    x = np.zeros(a.shape[1])
    if not usable.any():
        return x
    scaled = a[:, usable] / norms[usable]
    try:
        z, _ = _scipy_nnls(scaled, b, maxiter=max(1, MAX_ITER_PER_COLUMN * scaled.shape[1]))
    except RuntimeError as exc:
        raise NoConvergence(f"non-negative least squares did not converge ({exc}) on {a.shape[0]} samples of "
                            f"{a.shape[1]} costs") from None
    x[usable] = z / norms[usable]
    return x


def covariance(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The least-squares covariance sigma^2 (A_P^T A_P)^-1 of the coefficients that ``nnls`` left
    free (``x > 0``); NaN in the rows and columns of those held at 0 (at the bound the formula does
    not apply), and everywhere when too few rows are left to estimate sigma."""
    n = len(x)
    out = np.full((n, n), np.nan)
    free = x > 0
    dof = a.shape[0] - int(free.sum())
    if not free.any() or dof <= 0:
        return out
    resid = b - a @ x
    sigma2 = float(resid @ resid) / dof
    ap = a[:, free]
    out[np.ix_(free, free)] = sigma2 * np.linalg.pinv(ap.T @ ap)
    return out


def standard_errors(cov: np.ndarray) -> np.ndarray:
    """The square roots of the diagonal of a covariance matrix (NaN stays NaN)."""
    return np.sqrt(np.clip(np.diag(cov), 0.0, None))


def r_squared(measured: np.ndarray, predicted: np.ndarray) -> float:
    """1 - SS_res / SS_tot; NaN when the measurements do not vary."""
    measured = np.asarray(measured, dtype=np.float64)
    ss_tot = float(((measured - measured.mean()) ** 2).sum())
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(((measured - predicted) ** 2).sum()) / ss_tot
