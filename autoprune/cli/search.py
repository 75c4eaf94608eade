"""``autoprune search``: run a search (here, or as N worker processes) and print its front."""

from __future__ import annotations

import argparse

from autoprune.cli.common import check_out, config_from_args, out_dir


def run(args: argparse.Namespace) -> int:
    from autoprune.core.units import human
    from autoprune.policy_search import front as report
    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search
    from autoprune.ship import confirm

    config = config_from_args(args)
    out = out_dir(args, config.study_name)
    check_out(out, "front.csv/json/png")
    if config.workers > 1:
        from autoprune.workers import run_workers

        study, counts = run_workers(config, progress=not args.quiet)
    else:
        study, counts = run_search(config, progress=not args.quiet)
    paths = report.write_front(study, out) if studies.completed(study) else {}
    info = studies.info(study)
    print(f"\nstudy {study.study_name!r} in {config.storage_url}: {counts['complete']} trials fine-tuned, "
          f"{counts['early_stopped']} stopped early, "
          f"{counts['infeasible']} over-budget policies rejected before training, {counts['failed']} failed "
          f"({counts['seconds']:.0f} s)")
    print(f"budget: {human(info['budget']['flops'])} FLOPs ({info['budget']['flops'] / info['dense']['flops']:.3f} of dense "
          f"{human(info['dense']['flops'])}); dense search-val accuracy {info['dense']['val_accuracy']:.4f}")
    for reason, numbers in counts["failures"].items():
        print(f"failed trial(s) {', '.join(map(str, numbers))}: {reason}")
    for line in counts.get("worker_errors", []):
        print(line)
    for gid, why in (info.get("excluded") or {}).items():
        print(f"kept whole: {gid} ({why})")
    rows = report.front_rows(study)
    if rows:
        print("\nPareto front (search-val accuracy after a short fine-tune):")
        print(report.format_table(rows, dense=info["dense"]))
        if report.references_of(study):
            print("\n" + report.format_references(study))
        print("\n" + report.format_compute(study))
        print(f"\nfront: {paths['csv']}, {paths['json']}\nplot:  {paths['png']}")
    print(f"dashboard: optuna-dashboard {config.storage_url} --artifact-dir {info['artifacts']}")
    if config.compute:  # from the budget to a shipped model within E: the final round, then the recovery
        from autoprune.ship.apply import print_report
        from autoprune.ship.final import ship

        shipped = ship(study, out, progress=not args.quiet)
        print("\n" + report.format_final(study.user_attrs[studies.FINAL_ATTR]))
        print()
        print_report(shipped, out)
        return 0
    best = confirm.best_confirmed(study)
    if best is not None:
        print(f"apply the best confirmed policy (trial {best.number}): autoprune apply --storage {config.storage_url} "
              f"--study {study.study_name} --best")
    elif (best := studies.best_feasible(study)) is not None:
        print(f"apply the best feasible policy (trial {best.number}): autoprune apply --storage {config.storage_url} "
              f"--study {study.study_name} --best")
        print(f"or first re-score the top trials after a longer fine-tune: autoprune confirm --storage "
              f"{config.storage_url} --study {study.study_name} --top 3")
    return 0
