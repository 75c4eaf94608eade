"""``autoprune front``: the Pareto front of a study as a table, CSV, JSON and a plot (read-only)."""

from __future__ import annotations

import argparse
import sys

from autoprune.cli.common import check_out, out_dir, storage_and_study
from autoprune.errors import UserError


def run(args: argparse.Namespace) -> int:
    from autoprune.policy_search import front as report
    from autoprune.policy_search import study as studies

    storage, name = storage_and_study(args)
    check_out(args.out, "front.csv/json/png")
    study = studies.load(storage, name)
    rows = report.front_rows(study)
    final = study.user_attrs.get(studies.FINAL_ATTR)
    if not rows and final is not None and args.format == "table":  # --compute too small to search: what shipped
        print(f"study {study.study_name!r} has no trial: its search was not run\n\n" + report.format_final(final))
        print("\n" + report.format_compute(study))
        return 0
    if not rows:
        raise UserError(f"study {study.study_name!r} has no completed trial yet"
                        + ("; its search was not run, so it has no front (the table format shows what shipped)"
                           if final is not None else ""))
    paths = report.write_front(study, out_dir(args, study.study_name))
    if args.format == "table":
        print(report.format_table(rows, dense=studies.info(study)["dense"]))
        if report.references_of(study):
            print("\n" + report.format_references(study))
        if final is not None:  # a search with --compute: its final round and pick
            print("\n" + report.format_final(final))
        print("\n" + report.format_compute(study))
    elif args.format == "csv":
        sys.stdout.write(paths["csv"].read_text())
    else:
        sys.stdout.write(paths["json"].read_text() + "\n")
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}", file=sys.stderr)
    return 0
