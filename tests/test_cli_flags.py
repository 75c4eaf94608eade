"""The command line is generated from SearchConfig: every field with a ``--help`` group is a
flag of ``search`` and ``sensitivity`` that reaches the config, every other field is a key of a
``--config`` TOML file, and ``search --help`` stays short and grouped."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from autoprune.cli.common import config_from_args
from autoprune.cli.parser import build_parser, config_flags, flag_of
from autoprune.task.config import GROUPS, SearchConfig

#: a valid value other than the default, per flagged field (as typed on the command line)
VALUES = {
    "model": "resnet20", "dataset": "digits", "data_root": "/data", "val_size": "300", "image_size": "64",
    "checkpoint": "w.pt", "dense_epochs": "5", "budget_flops": "150M", "budget_params": "0.5",
    "budget_latency": "5ms", "compute": "4", "latency_batch": "8", "latency_runtime": "onnxruntime", "trials": "7",
    "timeout": "60", "sampler": "random", "space": "fill", "methods": "l1,fpgm", "keep_min": "0.1",
    "round_to": "8", "ignore": "layers.8.*,fc", "warm_start": "uniform,sensitivity", "seed": "3",
    "finetune_steps": "40", "batch_size": "64", "prune_steps": "3", "early_stop": "0.34",
    "workers": "2", "threads": "1", "device": "cpu", "amp": "bf16", "data_workers": "0", "storage": "sqlite:///x.db",
    "study": "mine", "artifact_dir": "arts",
}


def parse(*flags: str) -> SearchConfig:
    return config_from_args(build_parser().parse_args(["search", *flags]))


def test_every_flag_reaches_the_config() -> None:
    fields = config_flags()
    assert {f.name for f in fields} - {"augment", "references", "params_objective", "prune_stem", "reconstruct"} \
        == set(VALUES), "a new flag needs a value here"
    for f in fields:
        default = getattr(SearchConfig(budget_flops="0.5"), f.name)
        budget = [] if f.name in ("budget_flops", "budget_latency") else ["--budget-flops", "0.5"]
        if f.name not in VALUES:  # a switch: the flag turns the default around
            assert getattr(parse(*budget, flag_of(f)), f.name) is (not default), f.name
            continue
        kind = str(f.type).split(" |")[0]
        typed = VALUES[f.name]
        expected = typed.split(",") if kind.startswith("list") else {"int": int, "float": float}.get(kind, str)(typed)
        got = getattr(parse(*budget, flag_of(f), typed), f.name)
        assert got == expected != default, (f.name, got, default)


def test_fields_without_a_flag_are_config_keys(tmp_path) -> None:
    keys = [f for f in dataclasses.fields(SearchConfig) if "cli" not in f.metadata]
    assert {f.name for f in keys} >= {"keep_step", "min_channels", "bn_batches", "heartbeat", "front_floor"}
    flags = {a for action in build_parser()._subparsers._group_actions[0].choices["search"]._actions
             for a in action.option_strings}
    for f in keys:
        assert "--" + f.name.replace("_", "-") not in flags, f"{f.name} has a flag but no --help group"
    toml = tmp_path / "c.toml"
    toml.write_text("budget_flops = 0.5\nkeep_step = 0.25\nmin_channels = 8\nheartbeat = 60\ndownload = false\n")
    c = parse("--config", str(toml))
    assert (c.keep_step, c.min_channels, c.heartbeat, c.download) == (0.25, 8, 60, False)
    assert parse("--config", str(toml), "--budget-flops", "0.4").budget_flops == "0.4"  # flags override the file


def test_search_help_is_short_and_grouped() -> None:
    text = subprocess.run([sys.executable, "-m", "autoprune", "search", "--help"], capture_output=True, text=True,
                          check=True).stdout
    options = {m for m in re.findall(r"^\s+(-[-\w]+)", text, re.M)}
    assert len(options) <= 45, len(options)
    for title in GROUPS.values():
        assert f"\n{title}:" in text
    for retired in ("--confirm-top", "--keep-max", "--min-channels", "free", "blend"):
        assert retired not in text


@pytest.mark.parametrize("keep_min, levels", [
    (0.25, [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]),
    (0.1, [0.1, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]),  # refused before 2026-12-06
    (1.0, [1.0]),
])
def test_keep_levels_follow_keep_min(keep_min, levels) -> None:
    assert parse("--budget-flops", "0.5", "--keep-min", str(keep_min)).keep_levels == levels


def test_a_study_stored_with_a_retired_setting_is_still_read() -> None:
    stored = {**SearchConfig(budget_flops="0.5").to_dict(), "keep_max": 1.0, "space": "blend"}
    assert SearchConfig.from_stored(stored, source="s").space == "fill"  # apply and confirm replay policies
    with pytest.raises(Exception, match="searched with --space blend, which autoprune no longer has"):
        SearchConfig.from_stored(stored, source="s", resume=True)
