#!/usr/bin/env python3
"""Apply the best policy of a study (the best confirmed trial if `autoprune confirm` ran, else the best
feasible search-val score): re-prune the dense model, fine-tune longer,
evaluate on the test split, export model.pt + policy.json + report.

    python scripts/apply_best_policy.py --storage sqlite:///studies/fashion-mnist-smallcnn.db
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from autoprune import study as studies
    from autoprune.errors import UserError
    from autoprune.export import apply_trial, choose_trial, print_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default="sqlite:///studies/fashion-mnist-smallcnn.db", help="SQLAlchemy URL of the study")
    p.add_argument("--study", help="study name (optional when the storage holds one)")
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--out", help="export folder (default studies/<study>/best/)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        study = studies.load(args.storage, args.study)
        trial = choose_trial(study, None)
        out = Path(args.out) if args.out else Path("studies") / study.study_name / "best"
        print(f"best feasible trial: {trial.number} (search-val accuracy {trial.values[0]:.4f}, "
              f"{trial.values[1]:,.0f} FLOPs)", file=sys.stderr)
        report = apply_trial(study, trial_number=trial.number, out_dir=out, finetune_steps=args.finetune_steps,
                             progress=not args.quiet)
    except UserError as exc:
        print(f"apply_best_policy: error: {exc}", file=sys.stderr)
        return 2
    print_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
