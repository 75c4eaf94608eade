"""``autoprune apply``: re-prune the dense model with a chosen policy, recover it, test and export it."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.cli.common import check_out, storage_and_study
from autoprune.errors import UserError


def run(args: argparse.Namespace) -> int:
    from autoprune.policy_search import study as studies
    from autoprune.ship.apply import apply_trial, print_report
    from autoprune.ship.confirm import choose_trial
    from autoprune.ship.final import final_policy

    if args.finetune_steps is not None and args.finetune_steps < 0:
        raise UserError(f"--finetune-steps {args.finetune_steps} must be >= 0")
    if args.prune_steps < 1:
        raise UserError(f"--steps {args.prune_steps} must be at least 1")
    storage, name = storage_and_study(args)
    check_out(args.out, "the exported model")
    study = studies.load(storage, name)
    policy = source = None
    steps = args.finetune_steps if args.finetune_steps is not None else 1000
    picked = final_policy(study) if args.best else None
    if picked is not None:  # a search with --compute: its final round's pick, recovered with what is left
        policy, label, left = picked
        trial_number, source = None, f"final round pick: {label}"
        steps = left if args.finetune_steps is None else args.finetune_steps
        label = "final-" + label.replace(" ", "-")
    elif args.policy:
        trial_number, label = None, Path(args.policy).stem
    else:
        trial_number = choose_trial(study, None if args.best else args.trial).number
        label = f"trial-{trial_number}"
    out = Path(args.out) if args.out else Path("studies") / study.study_name / label
    report = apply_trial(study, trial_number=trial_number, policy_file=Path(args.policy) if args.policy else None,
                         out_dir=out, finetune_steps=steps, policy=policy, source=source, data_root=args.data_root,
                         device=args.device, onnx=args.onnx, quantize=args.quantize, prune_steps=args.prune_steps,
                         progress=not args.quiet, checkpoint=args.checkpoint, artifact_dir=args.artifact_dir)
    print_report(report, out)
    return 0
