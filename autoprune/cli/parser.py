"""The command line's flags. ``search`` and ``sensitivity`` take one flag per field of
``SearchConfig`` that declares a ``--help`` group (generated here, never listed twice); the other
commands read a stored study and have flags of their own. Imports neither torch nor Optuna."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from autoprune.task.config import GROUPS, SearchConfig

EPILOG = ("Docs: README.md. Settings without a flag are keys of a --config TOML file (the README lists them). "
          "Open a study live with: optuna-dashboard <storage-url>")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of config field ``f``."""
    return f.metadata["cli"]["flag"] or "--" + f.name.replace("_", "-")


def config_flags() -> list[dataclasses.Field]:
    """The config fields that are flags, in the order of their groups."""
    fields = [f for f in dataclasses.fields(SearchConfig) if "cli" in f.metadata]
    return sorted(fields, key=lambda f: list(GROUPS).index(f.metadata["cli"]["group"]))


def _add_config_flag(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    cli = f.metadata["cli"]
    kind = str(f.type).split(" |")[0]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    kw: dict[str, Any] = {"dest": f.name, "default": None, "help": cli["help"]}
    if kind == "bool":
        kw.update(action="store_const", const=not default)
    else:
        kw.update(type={"int": int, "float": float}.get(kind, str), metavar=cli["metavar"] or
                  ("N" if kind == "int" else "X" if kind == "float" else "LIST" if kind.startswith("list") else None))
        shown = ",".join(default) if isinstance(default, list) else default
        if shown not in (None, "", []) and "default:" not in cli["help"]:
            kw["help"] += f" (default: {shown})"
    group.add_argument(flag_of(f), **kw)


def _config_args(p: argparse.ArgumentParser) -> None:
    groups = {name: p.add_argument_group(title) for name, title in GROUPS.items()}
    out = groups["output"]
    out.add_argument("--config", help="study config TOML (e.g. studies/fashion-mnist.toml); flags override it")
    for f in config_flags():
        _add_config_flag(groups[f.metadata["cli"]["group"]], f)
    out.add_argument("--out", help="folder for front.csv/json/png, and with --compute the shipped model "
                     "(model.pt, policy.json, model.onnx, report.md) (default: studies/<study>/)")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--debug", action="store_true", help="on an error, show the traceback too (e.g. of your own factory)")


def _search_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search per-group pruning policies under a FLOPs budget",
                       description="Search pruning policies; results go to an Optuna study (resumable).", epilog=EPILOG)
    _config_args(p)
    p = sub.add_parser("sensitivity", help="accuracy after pruning each group alone at each keep level",
                       description="Per-group sensitivity (BN recalibrated, no fine-tune) with a plot; with a "
                       "budget, also the policy that meets it by pruning the least sensitive groups first.",
                       epilog=EPILOG)
    _config_args(p)


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
    which.add_argument("--best", action="store_true", help="a search with --compute: its final round's pick; else "
                       "the best trial confirmed by 'autoprune confirm' if any, else the feasible trial with the best "
                       "search-val accuracy")
    which.add_argument("--policy", help="a policy.json file (e.g. edited by hand or exported elsewhere) instead of a trial")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tune mini-batches (default: with --best "
                   "on a search with --compute, what is left of it; else 1000)")
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
