"""Evaluate every detector on the generated, labelled corpus and print the table.

    python bench/detect_eval.py            # 12 streams per anomaly kind (84 streams)
    python bench/detect_eval.py --quick    # 4 per kind

See edgeflow/evaluate.py for the corpus and the scoring. The last line is JSON: bench,
per_s (auto's windowed score, 0-100), baseline_per_s (the 3-sigma z-score's), ratio.
"""

from __future__ import annotations

import argparse
import json

from edgeflow import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    corpus = evaluate.generate(seed=args.seed, per_kind=4 if args.quick else 12)
    results = [evaluate.evaluate(name, make, corpus) for name, make in evaluate.standard_suite()]
    print(
        f"{len(corpus)} streams, {sum(len(s.windows) for s in corpus)} labelled anomaly windows (seed {args.seed})"
    )
    print(evaluate.table(results))
    by = {r.name: r for r in results}
    auto, base = by["auto"], by["zscore 3-sigma (baseline)"]
    print(
        json.dumps(
            {
                "bench": "detect_eval",
                "per_s": round(auto.score, 1),
                "baseline_per_s": round(base.score, 1),
                "ratio": round(auto.score / base.score, 2) if base.score > 0 else None,
            }
        )
    )


if __name__ == "__main__":
    main()
