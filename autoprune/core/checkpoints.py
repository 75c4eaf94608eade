"""Checkpoint I/O: state dicts saved atomically, read with ``weights_only=True`` (nothing is ever
unpickled), checked for shape and key mismatches with one-line errors, and hashed for cache keys."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
from torch import nn

from autoprune.errors import UserError


def checkpoint_key(**fields: object) -> str:
    """A short stable hash of the fields that determine a dense checkpoint."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_state(model: nn.Module, path: Path, **meta: object) -> None:
    """Save a state dict (tensors only) and metadata; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta)}, tmp)
    tmp.replace(path)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``: a plain state dict, or one under the
    key ``state_dict`` / ``model``. Anything else is a one-line :class:`UserError`."""
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the checkpoint file (a state dict saved with torch.save)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise UserError(f"checkpoint {path} is not a PyTorch checkpoint (expected a state dict saved with torch.save)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code in it, wrong format
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # no terminal colour codes
        if "Weights only load failed" in text:
            raise UserError(
                f"checkpoint {path} holds pickled Python objects (e.g. a whole model saved with torch.save(model)), "
                "which autoprune never unpickles; save model.state_dict() instead") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise UserError(f"cannot load checkpoint {path}: {first[:200]}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"checkpoint {path} holds no state dict of tensors")
    broken = [k for k, v in obj.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise UserError(f"checkpoint {path} has NaN or infinite values in {len(broken)} tensor(s) ("
                        f"{', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}); a diverged training run?")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    """Load the state dict at ``path`` into ``model``; a checkpoint of another architecture is one
    line that counts the missing, unexpected and mis-shaped keys and names the first few."""
    state = load_state_dict(path)
    mismatch = key_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(f"checkpoint {path} does not fit the model {type(model).__name__}: {mismatch}")
    model.load_state_dict(state)


def key_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], *, show: int = 3) -> str:
    """'' when ``given`` fits ``expected`` key for key and shape for shape; else one sentence
    that counts what is missing, unexpected and mis-shaped, names the first ``show`` of each,
    and gives the likely cause."""
    def first(names: list[str]) -> str:
        return ", ".join(names[:show]) + (", ..." if len(names) > show else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and tuple(given[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(expected)} keys missing ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} with another shape (checkpoint vs model: {first(shapes)})")
    if not parts:
        return ""
    if missing and unexpected and len(missing) + len(unexpected) > len(expected) // 2:
        cause = "it was saved from another architecture, or with a prefix such as 'module.' (DataParallel)"
    elif shapes and not (missing or unexpected):
        cause = "the same architecture at another width or number of classes (--model, the dataset's classes)"
    else:
        cause = "it was saved from another version of the model"
    return "; ".join(parts) + f". Likely cause: {cause}"
