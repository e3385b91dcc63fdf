"""Non-negative least squares: min ||A x - b|| subject to x >= 0.

A cost per event cannot be negative, and an unconstrained fit over correlated event counts (a
write fault always allocates a page; a PTE table comes with every 512 PTEs) happily trades a
large positive cost for a negative one.  This is the active-set method of C. L. Lawson and R. J.
Hanson, *Solving Least Squares Problems* (Prentice-Hall, 1974), chapter 23 -- the algorithm
behind ``scipy.optimize.nnls``, written out here because ptshare depends on numpy only.  The
problems calibration solves have a few dozen columns, so the plain form is fast enough.
"""

from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """The x >= 0 that minimises ||a @ x - b||.

    Columns are scaled to unit norm first (event counts range from 1 fork to millions of PTEs), so
    the tolerance means the same for every column; a column of zeros gets x = 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"nnls needs a matrix and a vector of as many rows, not {a.shape} and {b.shape}")
    m, n = a.shape
    norms = np.linalg.norm(a, axis=0)
    usable = norms > 0
    scaled = np.where(usable, a / np.where(usable, norms, 1.0), 0.0)
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)  # Lawson and Hanson's set P: the variables free to move
    tol = 10 * np.finfo(np.float64).eps * max(m, n) * max(1.0, float(np.abs(scaled).sum(axis=0).max(initial=0)))
    max_iter = max_iter or 3 * n + 10
    for _ in range(max_iter):
        w = scaled.T @ (b - scaled @ x)  # the negative gradient
        candidates = ~passive & usable & (w > tol)
        if not candidates.any():
            break
        passive[np.argmax(np.where(candidates, w, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(scaled[:, passive], b, rcond=None)[0]
            if (z[passive] > tol).all():
                break
            # Step from x towards z as far as x stays feasible, and drop the variables that reach 0.
            blocking = passive & (z <= tol)
            alpha = float(np.min(x[blocking] / (x[blocking] - z[blocking])))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = z
    return np.where(usable, x / np.where(usable, norms, 1.0), 0.0)


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
