"""What several commands share: the config from flags and a TOML file, the study a read-only
command opens, the output folder, the thread count."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from autoprune.errors import UserError
from autoprune.task.config import STUDY_NAME, SearchConfig, load_toml


def config_from_args(args: argparse.Namespace) -> Any:
    """The SearchConfig of ``search`` / ``sensitivity``: defaults < ``--config`` TOML < flags."""
    lists = {f.name for f in dataclasses.fields(SearchConfig) if str(f.type).startswith("list")}
    overrides = {k: v for k, v in vars(args).items() if k in SearchConfig.field_names()}
    for key in lists:
        if isinstance(overrides.get(key), str):  # comma-separated on the command line
            overrides[key] = [s.strip() for s in overrides[key].split(",") if s.strip()]
    return SearchConfig.from_sources(toml_path=args.config, overrides=overrides)


def storage_and_study(args: argparse.Namespace) -> tuple[str, str | None]:
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


def check_out(out: str | Path | None, what: str) -> None:
    """Before any work: ``--out`` must be a folder (or not exist yet)."""
    if out is not None and Path(out).is_file():
        raise UserError(f"--out {out} is a file; give a folder for {what}")


def out_dir(args: argparse.Namespace, study_name: str) -> Path:
    return Path(args.out) if args.out else Path("studies") / study_name


def set_threads(threads: int | None) -> None:
    """The CLI owns its process: it may set the thread count for good (the library only
    changes it for the duration of a call)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def trial_numbers(text: str) -> list[int]:
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise UserError(f"--trials: {part!r} is not a trial number; give comma-separated numbers such as 4,7,9")
        numbers.append(int(part))
    return numbers
