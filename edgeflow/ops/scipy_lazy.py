"""scipy functions imported on first use, not when edgeflow is imported.

``import scipy.signal`` costs ~0.3-1 s and ~50 MB of resident memory (it loads scipy's own
BLAS and its thread pool). A flow pays that only when a step that needs it runs, and the
detectors' first-order filters on short inputs (a live tick, ``edgeflow score`` on a small
file) never pay it: they run the same recurrence here, with the same floating-point
operations in the same order as scipy's ``lfilter``, so the results are bit-for-bit equal.

Longer inputs call the C loop behind ``scipy.signal.lfilter`` (``_sigtools._linear_filter``,
which ``lfilter`` calls with the same arguments for every filter with more than one
denominator coefficient) loaded from its own file: ``import scipy`` (~0.06 s) instead of
``scipy.signal`` (~0.6 s, which imports ``scipy.stats``). If that file or function is not
there (another scipy version), ``scipy.signal`` is imported as before; the results are the
same either way (tests/test_lazy_imports.py compares them with ``scipy.signal.lfilter``).
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

import numpy as np

#: the longest filtered axis run here instead of importing scipy (1-D input / rows of a 2-D one):
#: short enough that the loop here costs less than scipy's import would save - a live tick, a
#: few rows of `edgeflow score`. Longer inputs (bulk passes) import scipy once and run its C
#: loop: a Python loop over thousands of samples would cost the detectors most of their speed.
SHORT_1D = 64
SHORT_2D = 4


#: scipy's C filter loop once loaded (False: it could not be; None: not tried yet)
_linear_filter: Any = None


def preload_scipy_signal() -> None:
    """Load the filter now (a flow with a filtering step, before its readings flow): scipy's
    C loop, or scipy.signal when that cannot be loaded on its own."""
    if _direct_filter() is None:
        import scipy.signal  # noqa: F401


def _direct_filter() -> Any:
    """``scipy.signal._sigtools._linear_filter`` loaded without importing ``scipy.signal``
    (see the module docstring), or None."""
    global _linear_filter
    if _linear_filter is None:
        _linear_filter = _load_linear_filter() or False
    return _linear_filter or None


def _load_linear_filter() -> Any:
    try:
        import scipy

        name = "scipy.signal._sigtools"
        mod = sys.modules.get(name)
        if mod is None:
            here = Path(scipy.__file__).parent / "signal"
            path = next(
                (p for s in EXTENSION_SUFFIXES if (p := here / f"_sigtools{s}").is_file()), None
            )
            if path is None:
                return None
            loader = ExtensionFileLoader(name, str(path))
            spec = spec_from_file_location(name, str(path), loader=loader)
            if spec is None:
                return None
            mod = module_from_spec(spec)
            loader.exec_module(mod)
        return getattr(mod, "_linear_filter", None)
    except Exception:  # (ImportError, OSError...): scipy.signal is imported instead
        return None


def lfilter(b: Any, a: Any, x: Any, axis: int = -1, zi: Any = None) -> Any:
    """:func:`scipy.signal.lfilter` for IIR filters (``len(a) > 1``): short first-order
    inputs here, the rest in scipy's C loop (see the module docstring); scipy.signal is
    imported only when that loop cannot be loaded or for other filters."""
    if "scipy.signal" not in sys.modules:
        out = _first_order(b, a, x, axis, zi)
        if out is not None:
            return out
    bb, aa = np.atleast_1d(b), np.atleast_1d(a)
    if bb.ndim == 1 and aa.ndim == 1 and bb.size and aa.size > 1:
        direct = _direct_filter()
        if direct is not None:  # what scipy.signal.lfilter calls for these arguments
            xx = np.asarray(x)
            if zi is None:
                return direct(bb, aa, xx, axis)
            out, zf = direct(bb, aa, xx, axis, np.asarray(zi))
            return out, zf
    from scipy.signal import lfilter as _lfilter

    return _lfilter(b, a, x, axis=axis, zi=zi)


def _first_order(b: Any, a: Any, x: Any, axis: int, zi: Any) -> Any:
    """y[n] = b0*x[n] + z; z = b1*x[n] - a1*y[n] (scipy's direct form II transposed), or
    None when the call is not a short float64 first-order filter."""
    bb = np.asarray(b, np.float64).ravel()
    aa = np.asarray(a, np.float64).ravel()
    xx = np.asarray(x)
    if (
        xx.dtype != np.float64
        or xx.ndim not in (1, 2)
        or len(aa) != 2
        or len(bb) > 2
        or aa[0] != 1.0
        or (zi is not None and np.asarray(zi).dtype.kind not in "fiu")
    ):
        return None
    ax = axis % xx.ndim
    n = xx.shape[ax]
    if n > (SHORT_1D if xx.ndim == 1 else SHORT_2D):
        return None
    b0, b1 = float(bb[0]), float(bb[1]) if len(bb) == 2 else 0.0
    a1 = float(aa[1])
    if xx.ndim == 1:
        z = 0.0 if zi is None else float(np.asarray(zi, np.float64).ravel()[0])
        ys = []
        for v in xx.tolist():
            y = z + b0 * v
            z = v * b1 - y * a1
            ys.append(y)
        y1 = np.array(ys, np.float64)
        return y1 if zi is None else (y1, np.array([z]))
    rows = xx if ax == 1 else xx.T
    m = rows.shape[0]
    zz = (
        np.zeros(m)
        if zi is None
        else np.broadcast_to(np.asarray(zi, np.float64).reshape(m if ax == 1 else 1, -1), (m, 1))
        .ravel()
        .copy()
    )
    out = np.empty((m, n))
    with np.errstate(invalid="ignore", over="ignore"):  # scipy's C loop does not warn
        for j in range(n):
            col = rows[:, j]
            y2 = zz + b0 * col
            zz = col * b1 - y2 * a1
            out[:, j] = y2
    if ax == 0:
        out = out.T
    return out if zi is None else (out, zz.reshape((m, 1) if ax == 1 else (1, m)))
