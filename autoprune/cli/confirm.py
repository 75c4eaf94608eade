"""``autoprune confirm``: re-score the best trials after a longer recovery; apply --best then takes the best."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autoprune.cli.common import storage_and_study, trial_numbers
from autoprune.errors import UserError


def run(args: argparse.Namespace) -> int:
    from autoprune.policy_search import study as studies
    from autoprune.ship import confirm

    numbers = trial_numbers(args.trials) if args.trials else None
    for flag, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--top", args.top)):
        if value < 1:  # before the study is opened or anything is printed
            raise UserError(f"{flag} {value} must be at least 1")
    storage, name = storage_and_study(args)
    study = studies.load(storage, name)
    trials = confirm.candidates(study, top=args.top, numbers=numbers)
    if not trials:
        raise UserError(f"study {study.study_name!r} has no completed feasible trial yet")
    print(f"confirming {len(trials)} trial(s) of {study.study_name!r} ({', '.join(str(t.number) for t in trials)}): "
          f"{args.steps} fine-tune steps x {args.seeds} seed(s), scored on search-val", file=sys.stderr)

    def done(trial: Any, run: dict[str, Any]) -> None:
        print(f"trial {trial.number} seed {run['seed']}: {run['accuracy']:.4f} "
              f"(search {trial.values[0]:.4f}; {run['seconds']:.0f} s)", file=sys.stderr)

    confirm.confirm(study, trials, steps=args.steps, seeds=args.seeds, data_root=args.data_root,
                    device=args.device, progress=not args.quiet, on_run=done, checkpoint=args.checkpoint,
                    artifact_dir=args.artifact_dir)
    print(confirm.format_table(study, args.steps))
    best = confirm.best_confirmed(study)
    if best is not None:
        print(f"\nbest confirmed: trial {best.number}; apply it: autoprune apply --storage {storage} "
              f"--study {study.study_name} --best")
    return 0
