"""Evaluate every detector of ``edgeflow score`` on the generated monitoring corpus; print the table.

    python bench/detect_eval.py            # 80 series of 2,000-10,000 readings (~0.5 M readings)
    python bench/detect_eval.py --quick    # 32 series of 2,000-4,000 readings (under a minute)

See edgeflow/evaluate.py for the corpus, the events and the two scoring profiles. Baselines:
"never alarm" (0 by construction), the 3-sigma rolling z-score (``detect.zscore()`` with its
defaults) and random events at ``auto``'s alarm count on each series. Per-detector wall time
goes to stderr. A second table gives false alarms per series per day by shape. The last line is JSON: bench, per_s (auto's low_fp score, 0-100; the key
name is shared with the other benches), baseline_per_s (the 3-sigma z-score's low_fp score),
ratio (per_s / baseline_per_s, null unless the baseline is above 0), auto_standard,
auto_fa_per_day and baseline_fa_per_day (false alarms per series per day).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from edgeflow import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.quick:
        corpus = evaluate.generate(args.seed, n_series=32, min_points=2000, max_points=4000)
    else:
        corpus = evaluate.generate(args.seed)
    readings = sum(len(s.x) for s in corpus)
    results: dict[str, evaluate.Result] = {}
    events = {}
    for name, make in evaluate.standard_suite():
        t0 = time.perf_counter()
        events[name] = evaluate.run(make, corpus)
        took = time.perf_counter() - t0
        results[name] = evaluate.evaluate_events(name, events[name], corpus)
        print(f"{name}: {took:.1f} s ({readings / took:,.0f} readings/s)", file=sys.stderr)
    t0 = time.perf_counter()
    classic = [evaluate.classic_3sigma(s.x) for s in corpus]
    print(f"{evaluate.BASELINE}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    results[evaluate.BASELINE] = evaluate.evaluate_events(evaluate.BASELINE, classic, corpus)
    never = evaluate.evaluate_events("never alarm", evaluate.never_alarm(corpus), corpus)
    chance = evaluate.evaluate_events(
        "random at auto's alarm count",
        evaluate.random_events([len(e) for e in events["auto"]], corpus, seed=args.seed),
        corpus,
    )
    base, auto = results[evaluate.BASELINE], results["auto"]
    rows = [never, base, chance, *(r for n, r in results.items() if n != evaluate.BASELINE)]
    windows = sum(len(s.windows) for s in corpus)
    labelled = sum(1 for s in corpus if s.windows)
    print(
        f"{len(corpus)} series, {readings:,} readings, {base.days:.0f} series-days, "
        f"{labelled} labelled series, {windows} labelled windows (seed {args.seed})"
    )
    print(evaluate.table(rows))
    print("\nFalse alarms per series per day, by shape:\n")
    print(evaluate.shape_table(rows))
    print(
        json.dumps(
            {
                "bench": "detect_eval",
                "per_s": round(auto.scores["low_fp"], 1),
                "baseline_per_s": round(base.scores["low_fp"], 1),
                "ratio": (
                    round(auto.scores["low_fp"] / base.scores["low_fp"], 2)
                    if base.scores["low_fp"] > 0
                    else None
                ),
                "auto_standard": round(auto.scores["standard"], 1),
                "auto_fa_per_day": round(auto.fa_per_day, 3),
                "baseline_fa_per_day": round(base.fa_per_day, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
