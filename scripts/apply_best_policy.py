#!/usr/bin/env python3
"""Apply the best policy of a study: a thin wrapper of ``autoprune apply --best`` (the best
confirmed trial if ``autoprune confirm`` ran, else the best feasible search-val score).

    python scripts/apply_best_policy.py --storage sqlite:///studies/fashion-mnist-smallcnn.db
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default="sqlite:///studies/fashion-mnist-smallcnn.db", help="SQLAlchemy URL of the study")
    p.add_argument("--study", help="study name (optional when the storage holds one)")
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--out", help="export folder (default studies/<study>/trial-<N>/)")
    p.add_argument("--quiet", action="store_true")
    args, rest = p.parse_known_args(argv)  # anything else goes to 'autoprune apply' as it is
    from autoprune.cli import main as autoprune

    flags = ["apply", "--best", "--storage", args.storage, "--finetune-steps", str(args.finetune_steps)]
    flags += ["--study", args.study] if args.study else []
    flags += ["--out", args.out] if args.out else []
    flags += ["--quiet"] if args.quiet else []
    return autoprune(flags + rest)


if __name__ == "__main__":
    sys.exit(main())
