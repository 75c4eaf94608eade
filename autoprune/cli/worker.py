"""``autoprune worker``: join an existing study and run its trials, the setup read from the study."""

from __future__ import annotations

import argparse

from autoprune.cli.common import set_threads
from autoprune.errors import UserError


def run(args: argparse.Namespace) -> int:
    import secrets

    from autoprune.policy_search import study as studies
    from autoprune.policy_search.run import run_search
    from autoprune.store.artifacts import dense_checkpoint
    from autoprune.workers import join_config, remaining

    for flag, value in (("--trials", args.trials), ("--threads", args.threads), ("--until", args.until)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value} must be at least 1")
    if args.worker_index is not None and args.worker_index < 0:
        raise UserError(f"--worker-index {args.worker_index} must be >= 0")
    study = studies.load(args.storage, args.study)
    info = studies.info(study)
    if info["dense"].get("checkpoint") is None:
        raise UserError(f"study {study.study_name!r} was searched on an in-memory model through the Python API; "
                        "join it from Python with autoprune.search(...) and the same model")
    config = join_config(info, storage=args.storage, study=study.study_name, overrides={
        "threads": args.threads, "device": args.device, "data_root": args.data_root, "timeout": args.timeout,
        "heartbeat": args.heartbeat, "db_retry": args.db_retry, "artifact_dir": args.artifact_dir})
    dense = dense_checkpoint(info["dense"], checkpoint=args.checkpoint, artifact_dir=args.artifact_dir,
                             cache_dir=config.cache_dir)
    trained = studies.trained_count(study)
    until = args.until or (trained + args.trials if args.trials else remaining(info, trained))
    index = args.worker_index if args.worker_index is not None else secrets.randbelow(2**31)
    set_threads(config.threads)
    study, counts = run_search(config, progress=not args.quiet, dense_file=dense, worker=index, until=until)
    print(f"worker {index} on study {study.study_name!r}: {counts['complete']} trials fine-tuned, "
          f"{counts['early_stopped']} stopped early, {counts['infeasible']} rejected, {counts['failed']} failed; "
          f"the study holds {studies.trained_count(study)} trained trials ({counts['seconds']:.0f} s)")
    for reason, numbers in counts["failures"].items():
        print(f"failed trial(s) {', '.join(map(str, numbers))}: {reason}")
    return 0
