"""Search configuration: defaults, TOML study files, CLI overrides, validation.

Precedence: built-in defaults < ``--config studies/X.toml`` < command-line flags. The whole
resolved config is stored in the study, so ``front`` and ``apply`` need only the storage URL
and the study name.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.core.units import LATENCY_RUNTIMES, parse_budget, parse_latency
from autoprune.errors import UserError, unknown_choice

SAMPLERS = ("tpe", "nsga2", "random", "gp")
SPACES = ("front", "fill", "local")
#: settings removed since older studies were stored: dropped when such a study is read back
RETIRED_KEYS = ("keep_max",)
#: search spaces removed since (apply, confirm and front still read their studies)
RETIRED_SPACES = ("free", "blend")
DISTILL = ("off", "on", "search")
WARM_STARTS = ("uniform", "sensitivity")
AMP = ("off", "bf16", "fp16")
DEFAULT_METHODS = ("l1", "l2", "fpgm", "taylor", "activation")
#: a study name: it names files (studies/<study>.db, studies/<study>/), so no path separators
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


#: the groups ``--help`` shows the flags in, in this order (fields with no group are config keys only)
GROUPS = {
    "budget": "budget: how small the model must be",
    "task": "task: the model and the data",
    "search": "search: what the trials sample",
    "recovery": "recovery: how each trial is scored",
    "scale-out": "scale-out: devices, threads, processes",
    "output": "storage and output",
}


def option(group: str, help: str, *, flag: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """A field's command-line flag: its ``--help`` group, its help text (the default is added),
    and a flag name when it is not ``--field-name`` (``--no-augment`` for a true default)."""
    assert group in GROUPS, group
    return {"cli": {"group": group, "help": help, "flag": flag, "metavar": metavar}}


def _f(default: Any, group: str | None = None, help: str = "", **kw: Any) -> Any:
    """A config field; with a ``group`` it is also a command-line flag."""
    meta = option(group, help, **kw) if group else {}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


#: What ``--compute`` changes, for the keys not given: trials scored cheaply (the pruned layers refit
#: to the dense outputs, BatchNorm recalibrated, no fine-tune: the proxy that ranked random policies
#: best per unit of compute, docs/benchmarks.md), each spending the whole budget; no reference
#: curves (uniform L1 and global magnitude compete in the final round instead); and as many trials
#: as the search's share of the compute pays for, not a count.
COMPUTE_RECIPE: dict[str, Any] = {"space": "fill", "finetune_steps": 0, "reconstruct": True, "references": False,
                                  "trials": 100_000}


@dataclass
class SearchConfig:
    """Every setting of a search. Fields with a ``group`` are command-line flags too (the parser
    is generated from them); the others are keys of a ``--config`` TOML file only."""

    # task
    model: str = _f("smallcnn", "task", "built-in (smallcnn, resnet20, resnet56), a torchvision name, "
                    "timm:<name>, or package.module:factory", metavar="NAME")
    dataset: str = _f("fashion-mnist", "task", "fashion-mnist, cifar10, imagefolder, digits, or package.module:factory", metavar="NAME")
    data_root: str | None = _f(None, "task", "folder holding the dataset files", metavar="DIR")
    download: bool = _f(True)  # fall back to torchvision's download when the files are not found
    val_size: int | None = _f(None, "task", "images held out of train to score trials (default: 10%% of train, "
                              "at most 5,000)")
    split_seed: int = _f(0)
    image_size: int | None = _f(None, "task", "imagefolder: side in pixels images are cropped to (default: 224); "
                                "built-in datasets keep their own size")
    augment: bool = _f(True, "task", "imagefolder: no random-resized crop and flip while training",
                       flag="--no-augment")
    checkpoint: str | None = _f(None, "task", "your trained dense weights (a state dict, loaded with "
                                "weights_only=True); without one a dense baseline is trained and cached", metavar="FILE")
    dense_epochs: int = _f(3, "task", "epochs to train the dense baseline when no --checkpoint is given")
    dense_lr: float = _f(0.05)
    cache_dir: str = _f("studies/checkpoints")
    # budget
    budget_flops: str = _f("", "budget", "fraction of dense FLOPs (0.5) or a count (150M); required unless "
                           "--budget-latency is given", metavar="B")
    budget_params: str | None = _f(None, "budget", "parameter budget, as --budget-flops", metavar="B")
    budget_latency: str | None = _f(None, "budget", "measured-latency budget: a fraction of dense (0.6) or a time "
                                    "(5ms); alone, the FLOPs budget becomes uniform pruning's at that latency",
                                    metavar="L")
    latency_batch: int = _f(1, "budget", "images per forward pass when latency is measured")
    latency_runtime: str = _f("torch", "budget", f"what latency is measured in: {' or '.join(LATENCY_RUNTIMES)} "
                              "(torch on --device; onnxruntime on the CPU, as apply ships it)", metavar="RUNTIME")
    params_objective: bool = _f(False, "budget", "also minimise parameters (a third objective)")
    compute: float | None = _f(None, "budget", "total compute in dense epochs (one pass of the train split through "
                               "the dense model, forward and backward) for the search, the final round and the "
                               "recovery of the shipped model; with it, search ships the chosen model to --out",
                               metavar="E")
    # search
    trials: int = _f(25, "search", "trials to fine-tune in this run (rejected policies do not count)")
    timeout: float | None = _f(None, "search", "stop starting trials after this many seconds")
    sampler: str = _f("tpe", "search", ", ".join(SAMPLERS), metavar="NAME")
    space: str = _f("front", "search", "front: each trial picks how much of the budget to spend and where, so "
                    "one search gives a curve; fill: every trial spends the whole budget; local: fill around "
                    "the policy the sensitivity analysis derives", metavar="NAME")
    methods: list[str] = _f(list(DEFAULT_METHODS), "search",
                            "importance methods to choose from per group (l1,l2,fpgm,taylor,activation,random,"
                            "unstructured)")
    keep_min: float = _f(0.25, "search", "smallest keep ratio of any group")
    keep_step: float = _f(0.125)  # spacing of the keep levels from 1 down to keep_min (sensitivity, local)
    round_to: int = _f(1, "search", "round kept channel counts to a multiple of this (8 for faster kernels)")
    min_channels: int = _f(4)  # never keep fewer channels than this in a group
    ignore: list[str] = _f([], "search", "module-name patterns never to prune (the classifier output always, "
                           "the stem unless --prune-stem)")
    prune_stem: bool = _f(False, "search", "also prune the stem's output channels and every channel coupled "
                          "to them (in a ResNet, the first stage's residual stream)")
    warm_start: list[str] = _f(["uniform"], "search", f"first trials of a new study: {', '.join(WARM_STARTS)}")
    references: bool = _f(True, "output", "skip the reference curves (uniform L1 and global magnitude at a "
                          "few FLOPs levels; cached per dense model)", flag="--no-references")
    front_floor: float = _f(0.25)  # the lowest spend / reference level, as a fraction of the budget
    seed: int = _f(0, "search", "seed of the sampler, fine-tunes and dense baseline")
    # recovery
    finetune_steps: int = _f(150, "recovery", "fine-tune mini-batches per trial")
    finetune_lr: float = _f(0.01)
    batch_size: int = _f(128, "recovery", "images per mini-batch")
    bn_batches: int = _f(20)  # mini-batches that re-estimate BatchNorm statistics after pruning
    calib_images: int = _f(256)  # training images for taylor / activation importance
    distill: str = _f("off")  # "on" / "search": distil from the dense model while fine-tuning (not benchmarked)
    prune_steps: int = _f(1, "recovery", "reach each trial's policy in this many rounds of pruning and "
                          "fine-tuning")
    reconstruct: bool = _f(False, "recovery", "refit each pruned model's layers to the dense outputs (least "
                           "squares) before scoring; with --finetune-steps 0 a trial costs a few forward passes")
    reconstruct_images: int = _f(1024)
    early_stop: float = _f(0.0, "recovery", "after this fraction of the fine-tune steps, stop a trial that an "
                           "earlier, no larger one beats by early_stop_margin (0: off)")
    early_stop_margin: float = _f(0.02)
    # scale-out
    workers: int = _f(1, "scale-out", "search processes here, sharing --trials; the study is created first")
    threads: int | None = _f(None, "scale-out", "CPU threads per process (default: one per physical core; with "
                             "--workers N, cores // N)")
    device: str = _f("auto", "scale-out", "auto (CUDA when available), cpu, cuda, cuda:N, mps", metavar="DEVICE")
    amp: str = _f("off", "scale-out", f"mixed precision on CUDA: {', '.join(AMP)}", metavar="MODE")
    data_workers: int | None = _f(None, "scale-out", "DataLoader processes for data read per batch (default: "
                                  "min(4, cores - 1))")
    heartbeat: int = _f(30)  # seconds between a running trial's heartbeats; 3 missed: the trial is retried
    db_retry: float = _f(120.0)  # seconds a worker waits out an unreachable database before it gives up
    # storage
    storage: str | None = _f(None, "output", "SQLAlchemy URL (default: sqlite:///studies/<study>.db)", metavar="URL")
    study: str | None = _f(None, "output", "study name (default: <dataset>-<model>); an existing study is resumed", metavar="NAME")
    artifact_dir: str | None = _f(None, "output", "trial artifacts (policy.json, the dense checkpoint): a folder or "
                                  "s3://bucket (default: next to a SQLite study)", metavar="DIR")

    # ---------------------------------------------------------------- construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_sources(cls, *, toml_path: str | None = None, overrides: dict[str, Any] | None = None) -> SearchConfig:
        values: dict[str, Any] = {}
        if toml_path:
            values.update(load_toml(toml_path))
        flags = {k for k, v in (overrides or {}).items() if v is not None}
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values, source=toml_path or "config", flags=flags)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config", flags: Collection[str] = ()) -> SearchConfig:
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
        config = cls(**values)
        if config.compute is not None:  # the recipe a compute budget runs, where the keys were not given
            for name, value in COMPUTE_RECIPE.items():
                if name not in values:
                    setattr(config, name, value)
        config.validate(source, flags)
        return config

    @classmethod
    def from_stored(cls, values: dict[str, Any], *, source: str, resume: bool = False) -> SearchConfig:
        """The config a study stored, read back by a later version: keys retired since are dropped;
        a retired search space is refused for a search that goes on (``resume``), and read as
        ``fill`` by the commands that only replay policies (apply, confirm)."""
        values = {k: v for k, v in values.items() if k not in RETIRED_KEYS}
        if values.get("space") in RETIRED_SPACES:
            if resume:
                raise UserError(f"{source}: the study was searched with --space {values['space']}, which autoprune "
                                f"no longer has (valid: {', '.join(SPACES)}); front, confirm and apply still read "
                                "it, but no trial can be added: start a new study")
            values["space"] = "fill"
        return cls.from_dict(values, source=source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- derived values
    @property
    def study_name(self) -> str:
        if self.study:
            return self.study
        model = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.model)
        data = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.dataset)
        return f"{data}-{model}"

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///studies/{self.study_name}.db"

    @property
    def loader_workers(self) -> int:
        """DataLoader worker processes for data read per batch (in-memory data uses none)."""
        return self.data_workers if self.data_workers is not None else max(0, min(4, (os.cpu_count() or 1) - 1))

    @property
    def keep_levels(self) -> list[float]:
        """Keep ratios from ``keep_min`` to 1: every ``keep_step`` down from 1 that is not below
        ``keep_min``, and ``keep_min`` itself (``--keep-min 0.1`` with the step 0.125 gives
        0.1, 0.125, 0.25, ..., 1)."""
        n = int(math.floor((1 - self.keep_min) / self.keep_step + 1e-9))
        levels = {round(1 - i * self.keep_step, 6) for i in range(n + 1)} | {round(self.keep_min, 6)}
        return sorted(k for k in levels if k >= self.keep_min - 1e-9)

    # ---------------------------------------------------------------- validation
    def validate(self, source: str = "config", flags: Collection[str] = ()) -> None:
        """Every field's type and range, before any work. ``flags``: the fields set on the
        command line, named as flags in the messages (the others as config keys)."""
        from autoprune.core.importance import method_names

        def bad(msg: str) -> UserError:
            if msg.startswith("--"):  # a flag: "--seed -1 must be ...", not "--seed = -1 ..."
                msg = msg.replace(" = ", " ", 1)
            return UserError(msg if source == "config" else f"{source}: {msg}")

        def key(name: str) -> str:
            return f"--{name.replace('_', '-')}" if name in flags else name

        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name in self.field_names():
            value = getattr(self, name)
            t = str(types[name])
            if value is None and "None" in t:
                continue
            kind = t.split(" |")[0]
            if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(f"{key(name)} = {value!r} must be an integer")
            if kind == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                    or not math.isfinite(value)):
                raise bad(f"{key(name)} = {value!r} must be a finite number")
            if kind == "bool" and not isinstance(value, bool):
                raise bad(f"{key(name)} = {value!r} must be true or false")
            if kind == "str" and not isinstance(value, str):
                raise bad(f"{key(name)} = {value!r} must be a string" + (" (or left out)" if "None" in t else ""))
            if kind.startswith("list") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise bad(f"{key(name)} = {value!r} must be a list of strings")
        if self.study is not None and not STUDY_NAME.fullmatch(self.study):
            raise bad(f"{key('study')} = {self.study!r} is not a valid study name: use letters, digits, '_', '-' and '.', "
                      "starting with a letter or digit (it names files under studies/)")
        for name in ("seed", "split_seed"):
            if not 0 <= getattr(self, name) < 2**32:
                raise bad(f"{key(name)} = {getattr(self, name)} must be between 0 and 2**32 - 1")
        if not 0 <= self.early_stop_margin < 1:
            raise bad(f"{key('early_stop_margin')} = {self.early_stop_margin} must be in [0, 1): an accuracy difference")
        for name in ("finetune_lr", "dense_lr", "db_retry"):
            if getattr(self, name) <= 0:
                raise bad(f"{key(name)} = {getattr(self, name)} must be > 0")
        if not self.budget_flops and not self.budget_latency:
            raise bad("a budget is required: --budget-flops 0.5 (fraction of dense) or 150M (absolute), or "
                      "--budget-latency 0.6 (fraction of dense) or 5ms (measured)")
        if self.budget_flops:
            parse_budget(self.budget_flops, key("budget_flops"))
        if self.budget_latency is not None:
            parse_latency(self.budget_latency, key("budget_latency"))
        if self.latency_runtime not in LATENCY_RUNTIMES:
            raise unknown_choice("latency runtime", self.latency_runtime, LATENCY_RUNTIMES)
        if self.budget_params is not None:
            parse_budget(self.budget_params, key("budget_params"))
        from autoprune.task.models import model_names
        from autoprune.task.sources import dataset_names

        if ":" not in self.model and not self.model.startswith("<") and self.model not in model_names():
            raise unknown_choice("model", self.model, model_names())
        if ":" not in self.dataset and not self.dataset.startswith("<") and self.dataset not in dataset_names():
            raise unknown_choice("dataset", self.dataset, dataset_names())
        if self.sampler not in SAMPLERS:
            raise unknown_choice("sampler", self.sampler, SAMPLERS)
        if self.space not in SPACES:
            raise unknown_choice("search space", self.space, SPACES)
        if self.distill not in DISTILL:
            raise unknown_choice("distill setting", self.distill, DISTILL)
        for kind in self.warm_start:
            if kind not in WARM_STARTS:
                raise unknown_choice("warm start", kind, WARM_STARTS)
        if not self.methods:
            raise bad("methods must name at least one importance method")
        for method in self.methods:
            if method not in method_names():
                raise unknown_choice("importance method", method, method_names())
        if not 0 < self.keep_min <= 1:
            raise bad(f"{key('keep_min')} = {self.keep_min} must be in (0, 1]: the smallest share of a group's channels kept")
        if not 0 < self.keep_step <= 1:
            raise bad(f"{key('keep_step')} = {self.keep_step} must be in (0, 1]: the spacing of the keep levels")
        positive = ("trials", "workers", "latency_batch", "heartbeat", "prune_steps", "val_size", "dense_epochs", "batch_size", "round_to", "min_channels", "calib_images", "image_size",
                    "reconstruct_images")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(f"{key(name)} = {getattr(self, name)} must be >= 1")
        if self.data_workers is not None and self.data_workers < 0:
            raise bad(f"{key('data_workers')} = {self.data_workers} must be >= 0")
        if self.amp not in AMP:
            raise unknown_choice("amp setting", self.amp, AMP)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device.strip().lower()):
            raise unknown_choice("device", self.device, ("auto", "cpu", "cuda", "cuda:N", "mps"))
        for name in ("finetune_steps", "bn_batches"):
            if getattr(self, name) < 0:
                raise bad(f"{key(name)} = {getattr(self, name)} must be >= 0")
        if not 0 < self.front_floor <= 1:
            raise bad(f"{key('front_floor')} = {self.front_floor} must be in (0, 1]: the lowest FLOPs level as a fraction of the budget")
        if not 0 <= self.early_stop < 1:
            raise bad(f"{key('early_stop')} = {self.early_stop} must be in [0, 1): the fraction of fine-tune steps before the check")
        if self.timeout is not None and self.timeout <= 0:
            raise bad(f"{key('timeout')} = {self.timeout} must be > 0 seconds")
        if self.threads is not None and self.threads < 1:
            raise bad(f"{key('threads')} = {self.threads} must be >= 1")
        if self.compute is not None and not self.compute > 0:
            raise bad(f"{key('compute')} = {self.compute} must be > 0 dense epochs")
        if self.compute is not None and self.workers > 1:
            raise bad(f"{key('compute')} runs in one process; leave out {key('workers')} = {self.workers} "
                      "(several workers search with --trials)")


def load_toml(path: str) -> dict[str, Any]:
    if Path(path).is_dir():
        raise UserError(f"config file {path} is a folder; give a .toml file (e.g. studies/fashion-mnist.toml)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {str(exc).splitlines()[0][:200]}") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    # Allow a [search] table or flat keys; numbers given for string fields are fine.
    data = data.get("search", data)
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: search = {data!r} must be a table ([search] followed by key = value "
                        "lines), or leave the keys at the top level")
    for key in ("budget_flops", "budget_params", "budget_latency"):
        if isinstance(data.get(key), (int, float)):
            data[key] = repr(data[key])
    return data


def data_root_path(config: SearchConfig) -> Path | None:
    return Path(config.data_root).expanduser() if config.data_root else None
