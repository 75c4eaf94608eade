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
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Collection
from typing import Any

from autoprune.errors import UserError, unknown_choice

SAMPLERS = ("tpe", "nsga2", "random", "gp")
SPACES = ("fill", "front", "free", "local", "blend")
DISTILL = ("off", "on", "search")
WARM_STARTS = ("uniform", "sensitivity")
AMP = ("off", "bf16", "fp16")
LATENCY_RUNTIMES = ("torch", "onnxruntime")
DEFAULT_METHODS = ("l1", "l2", "fpgm", "taylor", "activation")
#: a study name: it names files (studies/<study>.db, studies/<study>/), so no path separators
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass
class SearchConfig:
    # task
    model: str = "smallcnn"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = True
    val_size: int | None = None  # search-val images; None: 10% of train, at most 5,000
    split_seed: int = 0
    image_size: int | None = None  # imagefolder: side in pixels (None: 224); built-ins keep their own size
    augment: bool = True  # imagefolder: random-resized crop + flip while training
    checkpoint: str | None = None  # a user's dense weights; else trained and cached
    dense_epochs: int = 3
    dense_lr: float = 0.05
    cache_dir: str = "studies/checkpoints"
    # search
    budget_flops: str = ""  # "0.5" (fraction of dense) or "150M" (absolute)
    budget_params: str | None = None
    budget_latency: str | None = None  # "0.6" (fraction of dense latency) or "5ms"; measured, cached per architecture
    latency_batch: int = 1  # images per forward pass when latency is measured
    latency_runtime: str = "torch"  # torch (eager, on --device) or onnxruntime (CPU, as apply ships it)
    params_objective: bool = False
    trials: int = 25
    timeout: float | None = None
    storage: str | None = None
    study: str | None = None
    artifact_dir: str | None = None  # trial artifacts (policy.json); None: next to a SQLite study, else studies/artifacts
    sampler: str = "tpe"
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None: torch's default (one per physical core)
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N, mps
    amp: str = "off"  # autocast on CUDA: bf16, fp16 or off
    data_workers: int | None = None  # DataLoader processes for data read per batch; None: min(4, cores - 1)
    workers: int = 1  # search processes started on this machine (search --workers N)
    heartbeat: int = 30  # seconds between a running trial's heartbeats; 3 missed: the trial is retried
    db_retry: float = 120.0  # seconds a worker waits out an unreachable database before it gives up
    # space
    space: str = "front"  # "front": relative widths scaled to spend a sampled share of the budget (a curve);
    # "fill": relative widths scaled to spend the whole budget; "free": absolute keep levels;
    # "local": fill around the sensitivity-derived policy (half to twice its keeps);
    # "blend": the line from uniform to the sensitivity-derived policy, every point tried in turn
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    keep_min: float = 0.25
    keep_max: float = 1.0
    keep_step: float = 0.125
    round_to: int = 1
    min_channels: int = 4
    ignore: list[str] = field(default_factory=list)
    prune_stem: bool = False  # also prune the first layer's output channels (and all coupled to them)
    distill: str = "off"
    warm_start: list[str] = field(default_factory=lambda: ["uniform"])  # first trials: "uniform", "sensitivity"
    references: bool = True  # uniform L1 and global magnitude curves at a few FLOPs levels (cached per dense model)
    front_floor: float = 0.25  # the lowest reference level, as a fraction of the budget
    # trial
    finetune_steps: int = 150
    finetune_lr: float = 0.01
    batch_size: int = 128
    bn_batches: int = 20
    calib_images: int = 256
    reconstruct: bool = False  # refit pruned layers to the dense outputs (least squares) before scoring
    reconstruct_images: int = 1024
    early_stop: float = 0.0  # fraction of fine-tune steps after which hopeless trials stop (0 = off)
    early_stop_margin: float = 0.02
    prune_steps: int = 1  # > 1: each trial reaches its policy in this many rounds of pruning + fine-tuning

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
        config.validate(source, flags)
        return config

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
        n = int(round((self.keep_max - self.keep_min) / self.keep_step))
        return [round(self.keep_min + i * self.keep_step, 6) for i in range(n + 1)]

    # ---------------------------------------------------------------- validation
    def validate(self, source: str = "config", flags: Collection[str] = ()) -> None:
        """Every field's type and range, before any work. ``flags``: the fields set on the
        command line, named as flags in the messages (the others as config keys)."""
        from autoprune.importance import method_names

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
        from autoprune.data import dataset_names
        from autoprune.models import model_names

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
        if not 0 < self.keep_min <= self.keep_max <= 1:
            raise bad(f"keep levels need 0 < keep_min ({self.keep_min}) <= keep_max ({self.keep_max}) <= 1")
        if self.keep_step <= 0 or abs((self.keep_max - self.keep_min) / self.keep_step - round((self.keep_max - self.keep_min) / self.keep_step)) > 1e-6:
            raise bad(f"keep_step {self.keep_step} must be > 0 and divide keep_max - keep_min ({self.keep_max - self.keep_min:g})")
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


_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_budget(text: str | float, name: str = "budget") -> tuple[str, float]:
    """``"0.5"`` -> ("fraction", 0.5); ``"150M"`` / ``"1.5e8"`` -> ("absolute", 1.5e8).

    A plain number up to 1 is a fraction of the dense model; above 1 (or with a K/M/G
    suffix) it is an absolute count."""
    s = str(text).strip()
    m = re.fullmatch(r"([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)", s)
    if not m:
        raise UserError(f"{name} {text!r} is not a number: use a fraction of dense like 0.5 or a count like 150M")
    value, suffix = float(m.group(1)), m.group(2).upper()
    if value <= 0:
        raise UserError(f"{name} {text!r} must be > 0: a fraction of dense like 0.5 or a count like 150M")
    value *= _SUFFIX[suffix]
    if not math.isfinite(value) or value >= 1e18:
        raise UserError(f"{name} {text!r} is too large: use a fraction of dense like 0.5 or a count like 150M")
    if suffix:
        return "absolute", value
    if value <= 1:
        return "fraction", value
    if value != int(value):
        raise UserError(f"{name} {text!r} is neither a fraction of dense (at most 1, e.g. 0.5) nor a whole count "
                        "(e.g. 150M or 150000000)")
    return "absolute", value


def parse_latency(text: str, name: str = "budget_latency") -> tuple[str, float]:
    """``"0.6"`` -> ("fraction", 0.6) of the dense model's latency; ``"5ms"``, ``"800us"``,
    ``"0.2s"`` -> ("ms", milliseconds)."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(ms|us|s)?", s)
    if not m:
        raise UserError(f"{name} {text!r} is not a latency: use a fraction of dense like 0.6 or a time like 5ms, "
                        "800us or 0.2s")
    value, unit = float(m.group(1)), m.group(2)
    if not 0 < value < 1e12:
        raise UserError(f"{name} {text!r} must be > 0: a fraction of dense like 0.6 or a time like 5ms")
    if unit is None:
        if value > 1:
            raise UserError(f"{name} {text!r} needs a unit above 1: a fraction of dense (at most 1, e.g. 0.6) or a "
                            "time like 5ms, 800us or 0.2s")
        return "fraction", value
    return "ms", value * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def resolve_budget(text: str, dense: int, name: str = "budget") -> int:
    kind, value = parse_budget(text, name)
    return int(value * dense) if kind == "fraction" else int(value)


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def data_root_path(config: SearchConfig) -> Path | None:
    return Path(config.data_root).expanduser() if config.data_root else None
