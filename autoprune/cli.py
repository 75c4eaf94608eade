"""The ``autoprune`` command: search, front, apply. User errors exit 2 with one line."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

EPILOG = "Docs: README.md. Open a study live with: optuna-dashboard <storage-url>"


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search per-group pruning policies under a FLOPs budget",
                       description="Search pruning policies; results go to an Optuna study (resumable).", epilog=EPILOG)
    _config_args(p)
    p.add_argument("--confirm-top", type=int, default=0, metavar="K",
                   help="when the trials are done, confirm the K best (autoprune confirm: re-prune, fine-tune "
                        "--confirm-steps, score on search-val), so that apply --best takes the best confirmed (default 0: "
                        "none)")
    p.add_argument("--confirm-steps", type=int, default=1000, help="fine-tune steps of --confirm-top (default 1000, as apply)")
    p = sub.add_parser("sensitivity", help="accuracy after pruning each group alone at each keep level",
                       description="Per-group sensitivity (BN recalibrated, no fine-tune) with a plot; with a "
                       "budget, also the policy that meets it by pruning the least sensitive groups first.",
                       epilog=EPILOG)
    _config_args(p)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback too (e.g. of your own factory)")
    p.add_argument("--config", help="study config TOML (e.g. studies/fashion-mnist.toml); flags override it")
    p.add_argument("--budget-flops", help="fraction of dense FLOPs (0.5) or an absolute count (150M); required "
                   "unless --budget-latency is given")
    p.add_argument("--budget-params", help="optional parameter budget, same forms as --budget-flops")
    p.add_argument("--budget-latency", help="optional measured-latency budget: a fraction of dense (0.6) or a time "
                   "(5ms, 800us); each architecture is timed against the dense model once and cached. Alone, the FLOPs "
                   "budget becomes that of uniform pruning at this latency")
    p.add_argument("--latency-batch", type=int, help="images per forward pass when latency is measured (default 1)")
    p.add_argument("--latency-runtime", help="what latency is measured in: torch (default; on --device) or "
                   "onnxruntime (CPU, the exported model.onnx)")
    p.add_argument("--model", help="built-in (smallcnn, resnet20, resnet56), torchvision name, or package.module:factory")
    p.add_argument("--dataset", help="fashion-mnist, cifar10, imagefolder, digits, or package.module:factory")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--no-download", dest="download", action="store_const", const=False, help="never try to download data")
    p.add_argument("--checkpoint", help="dense weights to start from (state dict; loaded with weights_only=True)")
    p.add_argument("--dense-epochs", type=int, help="epochs to train the dense baseline when no checkpoint is given")
    p.add_argument("--trials", type=int, help="trials to fine-tune in this run (over-budget policies are rejected for free and not counted)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="SQLAlchemy URL (default sqlite:///studies/<study>.db)")
    p.add_argument("--study", help="study name (default <dataset>-<model>); an existing study is resumed")
    p.add_argument("--artifact-dir", help="folder for trial artifacts, policy.json per trial (default next to a SQLite "
                   "study: studies/<study>-artifacts/); give it to optuna-dashboard with --artifact-dir")
    p.add_argument("--sampler", help="tpe (default), nsga2, random, gp")
    p.add_argument("--space", help="front (default): each trial picks how much of the budget to spend (down to "
                   "--front-floor) and where, so one search gives a curve; fill: every trial spends the whole budget, "
                   "the search picks where; "
                   "free: absolute keep levels, trials spread over FLOPs; local: like fill, around the policy the "
                   "per-group sensitivity analysis derives (half to twice its keeps; the analysis is cached); blend: the "
                   "line from uniform pruning to that policy (t = 0..1.25, 11 points, all tried in turn)")
    p.add_argument("--methods", help="comma-separated importance methods to search over (l1,l2,fpgm,taylor,activation,random,unstructured)")
    p.add_argument("--keep-min", type=float, help="smallest keep ratio per group")
    p.add_argument("--keep-step", type=float, help="spacing of keep ratios")
    p.add_argument("--round-to", type=int, help="round kept channel counts to a multiple of this")
    p.add_argument("--min-channels", type=int, help="never keep fewer channels than this in a group")
    p.add_argument("--ignore", help="comma-separated module-name patterns never to prune (the classifier output "
                   "always, the stem unless --prune-stem)")
    p.add_argument("--prune-stem", action="store_const", const=True,
                   help="also prune the stem's output channels and every channel coupled to them (in a ResNet, the "
                        "first stage's residual stream)")
    p.add_argument("--distill", help="knowledge distillation from the dense model while fine-tuning: off, on, search")
    p.add_argument("--warm-start", help="comma-separated first trials of a new study: uniform (default), sensitivity")
    p.add_argument("--no-references", dest="references", action="store_const", const=False,
                   help="skip the reference curves (uniform L1 and global magnitude at a few FLOPs levels, with the "
                        "trials' fine-tune; cached per dense model)")
    p.add_argument("--front-floor", type=float, help="lowest FLOPs level of the reference curves and of --space front, "
                   "as a fraction of the budget (default 0.25)")
    p.add_argument("--params-objective", action="store_const", const=True, help="also minimise parameters (3rd objective)")
    p.add_argument("--finetune-steps", type=int, help="fine-tune mini-batches per trial")
    p.add_argument("--prune-steps", type=int, help="reach each trial's policy in this many rounds of pruning and "
                   "fine-tuning, re-ranking channels in between (default 1: at once)")
    p.add_argument("--batch-size", type=int, help="images per mini-batch (default 128)")
    p.add_argument("--bn-batches", type=int, help="mini-batches that re-estimate BatchNorm statistics after pruning (default 20)")
    p.add_argument("--early-stop", type=float, help="after this fraction of the fine-tune steps, stop a trial that an "
                   "earlier one with no more FLOPs beats by --early-stop-margin (default 0 = off)")
    p.add_argument("--early-stop-margin", type=float, help="accuracy margin for --early-stop (default 0.02)")
    p.add_argument("--reconstruct", action="store_const", const=True,
                   help="refit each pruned model's layers to the dense layers' outputs (least squares) before "
                        "scoring it; with --finetune-steps 0, a trial costs a few forward passes")
    p.add_argument("--val-size", type=int, help="images held out of train for scoring trials")
    p.add_argument("--image-size", type=int, help="imagefolder: side in pixels images are cropped to (default 224); "
                   "built-in datasets keep their own size")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="imagefolder: no random-resized crop and flip while training")
    p.add_argument("--data-workers", type=int, help="DataLoader processes for data read per batch (default min(4, cores - 1))")
    p.add_argument("--seed", type=int, help="seed for the split-independent parts: baseline, sampler, fine-tune")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: torch's, one per physical core; "
                   "with --workers N, cores // N)")
    p.add_argument("--workers", type=int, help="search processes to run here, sharing --trials (default 1); the study is "
                   "created first, then each worker samples with a seed of its own")
    _fault_args(p)
    _device_args(p)
    p.add_argument("--amp", help="mixed precision on CUDA: bf16, fp16 or off (default)")
    p.add_argument("--out", help="folder for front.csv/json/png (default studies/<study>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _fault_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", type=int, help="seconds between a running trial's heartbeats (default 30); a trial "
                   "whose worker missed 3 is failed and run again by the next worker")
    p.add_argument("--db-retry", type=float, help="seconds to wait out an unreachable database before giving up "
                   "(default 120)")


def _worker_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join an existing study and run its trials (here or on another machine)",
                       description="Run trials of an existing study; the whole setup (model, data, budget, space) "
                       "is read from the study, and the dense checkpoint is fetched from its artifact store by "
                       "sha256.", epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    p.add_argument("--storage", required=True, help="SQLAlchemy URL of the study, e.g. postgresql+psycopg2://user@host/db")
    p.add_argument("--study", help="study name (may be omitted when the storage holds one study)")
    p.add_argument("--trials", type=int, help="trials to fine-tune in this worker (default: until the study holds "
                   "the --trials it was created with)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--threads", type=int, help="CPU threads of this worker (default: torch's, one per physical core)")
    _device_args(p)
    p.add_argument("--data-root", help="the dataset's folder on this machine, if not where the study was created")
    p.add_argument("--checkpoint", help="the study's dense checkpoint file on this machine (default: fetched from the "
                   "study's artifact store, checked by sha256)")
    p.add_argument("--artifact-dir", help="the study's artifact store as seen from this machine (a folder or s3://bucket)")
    p.add_argument("--worker-index", type=int, help="this worker's index: its sampler seed comes from the study's seed "
                   "and it (default: a random one)")
    p.add_argument("--until", type=int, help=argparse.SUPPRESS)  # search --workers: stop at this many trained trials
    _fault_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="where to compute: auto (CUDA when available; default), cpu, cuda, cuda:N, mps")


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    p.add_argument("--config", help="the study config TOML used for the search (gives storage and study name)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study (default sqlite:///studies/<study>.db)")
    p.add_argument("--study", help="study name (may be omitted when the storage holds one study)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Search, browse and apply structured-pruning policies.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)
    _search_parser(sub)
    _worker_parser(sub)
    p = sub.add_parser("front", help="show the Pareto front of a study (table, CSV, JSON, PNG)")
    _study_args(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="what to print on stdout")
    p.add_argument("--out", help="folder for front.csv/json/png (default studies/<study>/)")
    p = sub.add_parser("apply", help="re-prune the dense model with a trial's policy, fine-tune, test, export")
    _study_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (see 'autoprune front')")
    which.add_argument("--best", action="store_true", help="the best trial confirmed by 'autoprune confirm' if any, "
                       "else the feasible trial with the best search-val accuracy")
    which.add_argument("--policy", help="a policy.json file (e.g. edited by hand or exported elsewhere) instead of a trial")
    p.add_argument("--finetune-steps", type=int, default=1000, help="fine-tune mini-batches (default 1000)")
    p.add_argument("--data-root", help="dataset folder, if it moved since the search")
    _checkpoint_args(p)
    _device_args(p)
    p.add_argument("--steps", "--prune-steps", dest="prune_steps", type=int, default=1,
                   help="reach the policy in this many pruning steps with fine-tuning between them; the total "
                        "fine-tune steps stay --finetune-steps (default 1: prune at once)")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="do not write model.onnx")
    p.add_argument("--quantize", choices=("int8",), help="also write model.int8.onnx (onnxruntime static "
                   "quantization, calibrated on training images) with its test accuracy and size")
    p.add_argument("--out", help="export folder (default studies/<study>/trial-<N>/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("confirm", help="re-score the best trials after a longer fine-tune (apply --best then picks by it)",
                       description="Recover the top trials' policies as apply would (prune, BN recalibration, "
                       "--steps fine-tune steps per seed) and score them on search-val; results are stored in the "
                       "study, and apply --best then takes the best confirmed trial.", epilog=EPILOG)
    _study_args(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--top", type=int, default=3, help="confirm this many best feasible trials by search-val (default 3)")
    which.add_argument("--trials", help="comma-separated trial numbers to confirm instead (e.g. to split the work "
                       "between workers)")
    p.add_argument("--steps", type=int, default=1000, help="fine-tune steps per run (default 1000, as apply)")
    p.add_argument("--seeds", type=int, default=1, help="runs per trial, seeds seed..seed+N-1 of the study (default 1)")
    p.add_argument("--data-root", help="dataset folder, if it moved since the search")
    _checkpoint_args(p)
    _device_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="the study's dense checkpoint file on this machine (default: the path it was "
                   "searched with, else fetched from the study's artifact store; checked by sha256)")
    p.add_argument("--artifact-dir", help="the study's artifact store as seen from this machine (a folder or s3://bucket)")


def _config_from_args(args: argparse.Namespace) -> Any:
    from autoprune.config import SearchConfig

    overrides = {k: v for k, v in vars(args).items() if k in SearchConfig.field_names()}
    for key in ("methods", "ignore", "warm_start"):
        if isinstance(overrides.get(key), str):
            overrides[key] = [s.strip() for s in overrides[key].split(",") if s.strip()]
    return SearchConfig.from_sources(toml_path=args.config, overrides=overrides)


def _storage_and_study(args: argparse.Namespace) -> tuple[str, str | None]:
    from autoprune.config import STUDY_NAME, SearchConfig, load_toml

    if args.study is not None and not STUDY_NAME.fullmatch(args.study):
        raise UserError(f"--study {args.study!r} is not a valid study name: use letters, digits, '_', '-' and '.', "
                        "starting with a letter or digit")
    if args.storage:
        return args.storage, args.study
    if args.config:
        cfg = {k: v for k, v in load_toml(args.config).items() if k in ("model", "dataset", "study", "storage")}
        for k, v in cfg.items():
            if not isinstance(v, str):
                raise UserError(f"{args.config}: {k} = {v!r} must be a string")
        partial = SearchConfig(**cfg)
        if args.study:
            partial.study = args.study
        if not STUDY_NAME.fullmatch(partial.study_name):
            raise UserError(f"{args.config}: study = {partial.study_name!r} is not a valid study name")
        return partial.storage_url, partial.study_name
    name = args.study or SearchConfig().study_name
    return f"sqlite:///studies/{name}.db", name


def _check_out(out: str | Path | None, what: str) -> None:
    """Before any work: ``--out`` must be a folder (or not exist yet)."""
    if out is not None and Path(out).is_file():
        raise UserError(f"--out {out} is a file; give a folder for {what}")


def _out_dir(args: argparse.Namespace, study_name: str) -> Path:
    return Path(args.out) if args.out else Path("studies") / study_name


def _set_threads(threads: int | None) -> None:
    """The CLI owns its process: it may set the thread count for good (the library only
    changes it for the duration of a call)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def cmd_search(args: argparse.Namespace) -> int:
    from autoprune import confirm, report
    from autoprune import study as studies
    from autoprune.config import human
    from autoprune.pipeline import run_search

    if args.confirm_top < 0:
        raise UserError(f"--confirm-top {args.confirm_top} must be >= 0")
    if args.confirm_steps < 1:
        raise UserError(f"--confirm-steps {args.confirm_steps} must be at least 1")
    config = _config_from_args(args)
    out = _out_dir(args, config.study_name)
    _check_out(out, "front.csv/json/png")
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
        print(f"\nfront: {paths['csv']}, {paths['json']}\nplot:  {paths['png']}")
    print(f"dashboard: optuna-dashboard {config.storage_url} --artifact-dir {info['artifacts']}")
    if args.confirm_top and studies.best_feasible(study) is not None:
        _confirm_after_search(args, study)
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


def _confirm_after_search(args: argparse.Namespace, study: Any) -> None:
    """``search --confirm-top K``: autoprune confirm on the K best trials, with the search's device."""
    from autoprune import confirm

    trials = confirm.candidates(study, top=args.confirm_top)
    print(f"\nconfirming the {len(trials)} best trial(s) ({', '.join(str(t.number) for t in trials)}): "
          f"{args.confirm_steps} fine-tune steps, scored on search-val", file=sys.stderr)
    confirm.confirm(study, trials, steps=args.confirm_steps, seeds=1, data_root=args.data_root, device=args.device,
                    progress=not args.quiet, checkpoint=args.checkpoint, artifact_dir=args.artifact_dir)
    print("\n" + confirm.format_table(study, args.confirm_steps))


def cmd_worker(args: argparse.Namespace) -> int:
    import secrets

    from autoprune import study as studies
    from autoprune.artifacts import dense_checkpoint
    from autoprune.pipeline import run_search
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
    _set_threads(config.threads)
    study, counts = run_search(config, progress=not args.quiet, dense_file=dense, worker=index, until=until)
    print(f"worker {index} on study {study.study_name!r}: {counts['complete']} trials fine-tuned, "
          f"{counts['early_stopped']} stopped early, {counts['infeasible']} rejected, {counts['failed']} failed; "
          f"the study holds {studies.trained_count(study)} trained trials ({counts['seconds']:.0f} s)")
    for reason, numbers in counts["failures"].items():
        print(f"failed trial(s) {', '.join(map(str, numbers))}: {reason}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from autoprune import sensitivity
    from autoprune.baseline import get_dense
    from autoprune.config import human
    from autoprune.pipeline import importance_for_analysis, plan
    from autoprune.task import load_config_task, pruner_of, runtime_of

    budget_given = bool(args.budget_flops)
    if not budget_given:
        args.budget_flops = "1"
    config = _config_from_args(args)
    _set_threads(config.threads)
    task = load_config_task(config)
    runtime = runtime_of(config, task)
    example = task.example_input()
    dense = get_dense(config, task, progress=not args.quiet, runtime=runtime)
    pruner = pruner_of(dense.model, example, config)
    # the same method, hence the same cached analysis and policy, as --warm-start sensitivity / --space local
    result = sensitivity.analyse(pruner, task.plain_train, task.val, config.keep_levels,
                                 method=importance_for_analysis(config), batch_size=config.batch_size,
                                 seed=config.seed, progress=not args.quiet, cache_dir=Path(config.cache_dir),
                                 runtime=runtime)
    paths = sensitivity.write(result, _out_dir(args, config.study_name))
    print(sensitivity.format_table(result))
    if budget_given:
        the_plan = plan(dense.model, example, config)
        policy = sensitivity.derived_policy(result, pruner, config.keep_levels, the_plan.budget.flops)
        if policy is None:
            print(f"no policy from single-group sensitivity meets {human(the_plan.budget.flops)} FLOPs")
        else:
            print(f"\npolicy for {human(the_plan.budget.flops)} FLOPs, least sensitive groups pruned first: "
                  + ", ".join(f"{gid} {g.keep:g}" for gid, g in policy.groups.items()))
    print(f"\nwrote {paths['json']}, {paths['png']}")
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from autoprune import report
    from autoprune import study as studies

    storage, name = _storage_and_study(args)
    _check_out(args.out, "front.csv/json/png")
    study = studies.load(storage, name)
    rows = report.front_rows(study)
    if not rows:
        raise UserError(f"study {study.study_name!r} has no completed trial yet")
    paths = report.write_front(study, _out_dir(args, study.study_name))
    if args.format == "table":
        print(report.format_table(rows, dense=studies.info(study)["dense"]))
        if report.references_of(study):
            print("\n" + report.format_references(study))
    elif args.format == "csv":
        sys.stdout.write(paths["csv"].read_text())
    else:
        sys.stdout.write(paths["json"].read_text() + "\n")
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}", file=sys.stderr)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from autoprune import study as studies
    from autoprune.confirm import choose_trial
    from autoprune.export import apply_trial, print_report

    if args.finetune_steps < 0:
        raise UserError(f"--finetune-steps {args.finetune_steps} must be >= 0")
    if args.prune_steps < 1:
        raise UserError(f"--steps {args.prune_steps} must be at least 1")
    storage, name = _storage_and_study(args)
    _check_out(args.out, "the exported model")
    study = studies.load(storage, name)
    if args.policy:
        trial_number, label = None, Path(args.policy).stem
    else:
        trial_number = choose_trial(study, None if args.best else args.trial).number
        label = f"trial-{trial_number}"
    out = Path(args.out) if args.out else Path("studies") / study.study_name / label
    report = apply_trial(study, trial_number=trial_number, policy_file=Path(args.policy) if args.policy else None,
                         out_dir=out, finetune_steps=args.finetune_steps, data_root=args.data_root,
                         device=args.device, onnx=args.onnx, quantize=args.quantize, prune_steps=args.prune_steps,
                         progress=not args.quiet, checkpoint=args.checkpoint, artifact_dir=args.artifact_dir)
    print_report(report, out)
    return 0


def _trial_numbers(text: str) -> list[int]:
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UserError(f"--trials: {part!r} is not a trial number; give comma-separated numbers such as 4,7,9")
        numbers.append(int(part))
    return numbers


def cmd_confirm(args: argparse.Namespace) -> int:
    from autoprune import confirm
    from autoprune import study as studies

    numbers = _trial_numbers(args.trials) if args.trials else None
    for flag, value in (("--steps", args.steps), ("--seeds", args.seeds), ("--top", args.top)):
        if value < 1:  # before the study is opened or anything is printed
            raise UserError(f"{flag} {value} must be at least 1")
    storage, name = _storage_and_study(args)
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


#: what an interrupt leaves behind, per command
INTERRUPTED = {
    "search": "interrupted; the trial in flight is queued again for the next worker, completed trials are stored, "
              "and the study can be resumed",
    "worker": "interrupted; the trial in flight is queued again for the next worker, completed trials are stored",
    "apply": "interrupted; nothing was exported",
    "confirm": "interrupted; the confirmed runs so far are stored in the study, and confirm resumes from them",
    "sensitivity": "interrupted; the groups analysed so far are lost, nothing was written",
    "front": "interrupted",
}


def _storage_outage(exc: BaseException) -> BaseException | None:
    """The StorageUnavailable that ``exc`` was raised from, if any (Optuna may raise another
    error while handling it)."""
    from autoprune.storage import StorageUnavailable, causes

    return next((e for e in causes(exc) if isinstance(e, StorageUnavailable)), None)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*experimental.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    import optuna

    from autoprune import interrupts

    # failed trials get one line each from autoprune (with the reason stored); Optuna's warning would add a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    previous = interrupts.install()
    try:
        commands = {"search": cmd_search, "worker": cmd_worker, "sensitivity": cmd_sensitivity, "front": cmd_front,
                    "apply": cmd_apply, "confirm": cmd_confirm}
        return commands[args.command](args)
    except UserError as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        interrupts.acknowledge()
        print(INTERRUPTED[args.command], file=sys.stderr)
        return 143 if isinstance(exc, interrupts.Terminated) else 130
    except BrokenPipeError:
        # the reader went away (front | head -1): say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        outage = _storage_outage(exc)
        if outage is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"autoprune {args.command}: error: {outage}", file=sys.stderr)
        return 1
    finally:
        interrupts.restore(previous)


if __name__ == "__main__":
    sys.exit(main())
