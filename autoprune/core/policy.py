"""A pruning policy as data: versioned JSON, validated where it enters.

``groups`` maps a group id (root module name) to a method and a keep ratio. Once applied to a
dense model, each entry also carries the resulting channel counts and the kept channel indices,
so the same pruned architecture (and, before fine-tuning, the same weights) can be rebuilt
from the dense checkpoint and this file alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from autoprune.errors import UserError

FORMAT = "autoprune.policy"
VERSION = 1


@dataclass(frozen=True)
class GroupChoice:
    method: str
    keep: float  # fraction of channels (structured) or of weights (unstructured) kept
    channels: int | None = None  # channels before pruning
    kept: int | None = None  # channels after pruning (== channels for unstructured)
    kept_indices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Policy:
    groups: dict[str, GroupChoice]
    distill: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def with_groups(self, groups: dict[str, GroupChoice]) -> Policy:
        return replace(self, groups=groups)

    def to_dict(self) -> dict[str, Any]:
        groups = {}
        for gid, g in self.groups.items():
            d = {k: v for k, v in asdict(g).items() if v is not None}
            if g.kept_indices is not None:
                d["kept_indices"] = list(g.kept_indices)
            groups[gid] = d
        return {
            "format": FORMAT,
            "version": VERSION,
            "distill": self.distill,
            "groups": groups,
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")

    def channels(self) -> dict[str, int]:
        return {gid: g.kept for gid, g in self.groups.items() if g.kept is not None}

    @staticmethod
    def from_dict(data: Any, *, source: str = "policy") -> Policy:
        return _parse(data, source)

    @staticmethod
    def load(path: Path) -> Policy:
        path = Path(path)
        if path.is_dir():
            raise UserError(f"policy file {path} is a folder; give a policy.json file")
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"policy file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"policy file {path} is not valid JSON: {exc}") from None
        except RecursionError:
            raise UserError(f"policy file {path} is nested too deeply to be a policy") from None
        except OSError as exc:
            raise UserError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
        return _parse(data, str(path))


def _parse(data: Any, source: str) -> Policy:
    from autoprune.core.importance import method_names

    def bad(msg: str) -> UserError:
        return UserError(f"{source}: {msg}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"not an autoprune policy (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise bad(f"policy version {data.get('version')!r} is not supported (supported: {VERSION})")
    raw_groups = data.get("groups")
    if not isinstance(raw_groups, dict) or not raw_groups:
        raise bad("\"groups\" must be a non-empty object of group id -> {method, keep}")
    methods = method_names()
    groups = {}
    for gid, g in raw_groups.items():
        if not isinstance(g, dict):
            raise bad(f"group {gid!r} must be an object")
        unknown = set(g) - {"method", "keep", "channels", "kept", "kept_indices"}
        if unknown:
            raise bad(f"group {gid!r} has unknown keys {sorted(unknown)}")
        method = g.get("method")
        if method not in methods:
            raise bad(f"group {gid!r}: unknown method {method!r}; valid choices: {', '.join(methods)}")
        keep = g.get("keep")
        if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not (0 < keep <= 1) or math.isnan(keep):
            raise bad(f"group {gid!r}: keep {keep!r} must be a number in (0, 1]")
        ints = {}
        for key in ("channels", "kept"):
            v = g.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise bad(f"group {gid!r}: {key} {v!r} must be a positive integer")
            ints[key] = v
        idx = g.get("kept_indices")
        if idx is not None:
            if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise bad(f"group {gid!r}: kept_indices must be a list of integers")
            if idx != sorted(set(idx)) or (idx and idx[0] < 0):
                raise bad(f"group {gid!r}: kept_indices must be ascending, unique and non-negative")
            if ints["kept"] is not None and len(idx) != ints["kept"]:
                raise bad(f"group {gid!r}: {len(idx)} kept_indices but kept = {ints['kept']}")
            if ints["channels"] is not None and idx and idx[-1] >= ints["channels"]:
                raise bad(f"group {gid!r}: kept index {idx[-1]} out of range for {ints['channels']} channels")
            idx = tuple(idx)
        groups[str(gid)] = GroupChoice(method=method, keep=float(keep), channels=ints["channels"], kept=ints["kept"], kept_indices=idx)
    distill = data.get("distill", False)
    if not isinstance(distill, bool):
        raise bad(f"distill {distill!r} must be true or false")
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise bad("meta must be an object")
    return Policy(groups=groups, distill=distill, meta=meta)
