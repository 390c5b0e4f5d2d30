"""A plain-Python, one-reading-at-a-time reference for window results.

Written independently of the numpy kernels: lists, dicts and loops only. The property
tests feed the same readings to both and compare.
"""

from __future__ import annotations

import math
from typing import Any

Reading = tuple[str, int, dict[str, float]]


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    h = (len(s) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def aggregate(func: str, q: float | None, items: list[tuple[int, int, float]]) -> float | None:
    """``items`` are (t, arrival_no, value) with missing values already removed."""
    xs = [v for _, _, v in items]
    if func == "count":
        return len(xs)
    if not xs:
        return None
    n = len(xs)
    if func == "sum":
        return sum(xs)
    if func == "mean":
        return sum(xs) / n
    if func == "min":
        return min(xs)
    if func == "max":
        return max(xs)
    if func in ("var", "std"):
        m = sum(xs) / n
        v = sum((x - m) ** 2 for x in xs) / n
        return v if func == "var" else math.sqrt(v)
    if func == "rms":
        return math.sqrt(sum(x * x for x in xs) / n)
    if func == "first":
        return min(items, key=lambda it: (it[0], it[1]))[2]
    if func == "last":
        return max(items, key=lambda it: (it[0], it[1]))[2]
    if func == "median":
        return _percentile(xs, 50)
    if func == "percentile":
        assert q is not None
        return _percentile(xs, q)
    if func == "ptp":
        return max(xs) - min(xs)
    raise ValueError(func)


def _record(
    key: str,
    start: int,
    end: int,
    members: list[tuple[int, int, dict[str, float]]],
    aggs: list[Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": key, "window_start": start, "window_end": end, **extra}
    for a in aggs:
        if a.func == "count" and a.field is None:
            rec[a.output_name] = len(members)
            continue
        items = [(t, i, vals[a.field]) for t, i, vals in members if not math.isnan(vals[a.field])]
        rec[a.output_name] = aggregate(a.func, a.q, items)
    return rec


def reference(
    kind: str, p: dict[str, int], aggs: list[Any], readings: list[Reading], lateness: int
) -> tuple[list[dict[str, Any]], list[tuple[str, int]]]:
    """Return (window records, late readings as (key, t)), flushing everything at the end."""
    out: list[dict[str, Any]] = []
    late: list[tuple[str, int]] = []
    max_t: dict[str, int] = {}
    open_w: dict[tuple[str, int], list[tuple[int, int, dict[str, float]]]] = {}
    sess: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
    cnt: dict[str, list[tuple[int, int, dict[str, float]]]] = {}
    seq: dict[str, int] = {}

    def wm_of(key: str) -> float:
        return max_t[key] - lateness if key in max_t else -math.inf

    def close_time_windows(key: str, wm: float) -> None:
        for (k2, k), members in sorted(open_w.items()):
            start = k * p["slide"] + p["offset"]
            if k2 == key and start + p["size"] <= wm:
                out.append(_record(key, start, start + p["size"], members, aggs, {}))
                del open_w[(k2, k)]

    def close_sessions(key: str, wm: float, force: bool = False) -> None:
        pts = sorted(sess.get(key, []), key=lambda m: (m[0], m[1]))
        clusters: list[list[tuple[int, int, dict[str, float]]]] = []
        for m in pts:
            if clusters and m[0] - clusters[-1][-1][0] < p["gap"]:
                clusters[-1].append(m)
            else:
                clusters.append([m])
        remaining = []
        for cl in clusters:
            if force or cl[-1][0] + p["gap"] <= wm:
                out.append(_record(key, cl[0][0], cl[-1][0], cl, aggs, {}))
            else:
                remaining.extend(cl)
        sess[key] = remaining

    for i, (key, t, vals) in enumerate(readings):
        m = (t, i, vals)
        if kind == "count":
            cnt.setdefault(key, []).append(m)
            if len(cnt[key]) == p["n"]:
                ms = cnt.pop(key)
                s = seq.get(key, 0)
                seq[key] = s + 1
                out.append(
                    _record(
                        key,
                        min(x[0] for x in ms),
                        max(x[0] for x in ms),
                        ms,
                        aggs,
                        {"window_seq": s},
                    )
                )
            continue
        wm = wm_of(key)
        if kind == "session":
            if t < wm:
                late.append((key, t))
            else:
                sess.setdefault(key, []).append(m)
        else:
            placed = False
            k = math.floor((t - p["offset"]) / p["slide"])
            while k * p["slide"] + p["offset"] + p["size"] > t:
                start = k * p["slide"] + p["offset"]
                if start <= t and start + p["size"] > wm:
                    open_w.setdefault((key, k), []).append(m)
                    placed = True
                k -= 1
            if not placed:
                late.append((key, t))
        max_t[key] = max(max_t.get(key, t), t)
        if kind == "session":
            close_sessions(key, wm_of(key))
        else:
            close_time_windows(key, wm_of(key))
    # end of input: flush
    if kind == "count":
        for key, ms in cnt.items():
            s = seq.get(key, 0)
            out.append(
                _record(
                    key, min(x[0] for x in ms), max(x[0] for x in ms), ms, aggs, {"window_seq": s}
                )
            )
    elif kind == "session":
        for key in list(sess):
            close_sessions(key, math.inf, force=True)
    else:
        for key in {k for k, _ in open_w}:
            close_time_windows(key, math.inf)
    return out, late
