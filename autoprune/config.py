"""Search configuration: defaults, TOML study files, CLI overrides, validation.

Precedence: built-in defaults < ``--config studies/X.toml`` < command-line flags. The whole
resolved config is stored in the study, so ``front`` and ``apply`` need only the storage URL
and the study name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.errors import UserError, unknown_choice

SAMPLERS = ("tpe", "nsga2", "random", "gp")
SPACES = ("fill", "front", "free", "local", "blend")
DISTILL = ("off", "on", "search")
WARM_STARTS = ("uniform", "sensitivity")
AMP = ("off", "bf16", "fp16")
DEFAULT_METHODS = ("l1", "l2", "fpgm", "taylor", "activation")


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
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values, source=toml_path or "config")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> SearchConfig:
        names = cls.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
        config = cls(**values)
        config.validate(source)
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
    def validate(self, source: str = "config") -> None:
        from autoprune.importance import method_names

        def bad(msg: str) -> UserError:
            return UserError(f"{source}: {msg}")

        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name in self.field_names():
            value = getattr(self, name)
            t = str(types[name])
            if value is None and "None" in t:
                continue
            if t.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(f"{name} = {value!r} must be an integer")
            if t == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise bad(f"{name} = {value!r} must be a number")
            if t == "bool" and not isinstance(value, bool):
                raise bad(f"{name} = {value!r} must be true or false")
            if t.startswith("list") and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise bad(f"{name} = {value!r} must be a list of strings")
        if not self.budget_flops:
            raise bad("a FLOPs budget is required: --budget-flops 0.5 (fraction of dense) or 150M (absolute)")
        parse_budget(self.budget_flops, "budget_flops")
        if self.budget_params is not None:
            parse_budget(self.budget_params, "budget_params")
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
        positive = ("trials", "workers", "heartbeat", "prune_steps", "val_size", "dense_epochs", "batch_size", "round_to", "min_channels", "calib_images", "image_size",
                    "reconstruct_images")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(f"{name} = {getattr(self, name)} must be >= 1")
        if self.data_workers is not None and self.data_workers < 0:
            raise bad(f"data_workers = {self.data_workers} must be >= 0")
        if self.amp not in AMP:
            raise unknown_choice("amp setting", self.amp, AMP)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device.strip().lower()):
            raise unknown_choice("device", self.device, ("auto", "cpu", "cuda", "cuda:N", "mps"))
        for name in ("finetune_steps", "bn_batches"):
            if getattr(self, name) < 0:
                raise bad(f"{name} = {getattr(self, name)} must be >= 0")
        if not 0 < self.front_floor <= 1:
            raise bad(f"front_floor = {self.front_floor} must be in (0, 1]: the lowest FLOPs level as a fraction of the budget")
        if not 0 <= self.early_stop < 1:
            raise bad(f"early_stop = {self.early_stop} must be in [0, 1): the fraction of fine-tune steps before the check")
        if self.timeout is not None and self.timeout <= 0:
            raise bad(f"timeout = {self.timeout} must be > 0 seconds")
        if self.threads is not None and self.threads < 1:
            raise bad(f"threads = {self.threads} must be >= 1")


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None
    # Allow a [search] table or flat keys; numbers given for string fields are fine.
    data = data.get("search", data)
    for key in ("budget_flops", "budget_params"):
        if isinstance(data.get(key), (int, float)):
            data[key] = repr(data[key])
    return data


_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_budget(text: str | float, name: str = "budget") -> tuple[str, float]:
    """``"0.5"`` -> ("fraction", 0.5); ``"150M"`` / ``"1.5e8"`` -> ("absolute", 1.5e8).

    A plain number up to 1 is a fraction of the dense model; above 1 (or with a K/M/G
    suffix) it is an absolute count."""
    s = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)", s)
    if not m:
        raise UserError(f"{name} {text!r} is not a number: use a fraction of dense like 0.5 or a count like 150M")
    value, suffix = float(m.group(1)), m.group(2).upper()
    if value <= 0:
        raise UserError(f"{name} {text!r} must be > 0")
    if suffix or value > 1:
        return "absolute", value * _SUFFIX[suffix]
    return "fraction", value


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
