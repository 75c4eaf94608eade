"""Process-wide torch settings that library calls may change only for their own duration.

A user calling the Python API keeps their thread count and global random state: every
setting here is restored when the ``with`` block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block on ``threads`` intra-op CPU threads (``None``: leave the setting alone),
    then restore the caller's setting. Yields the thread count in effect."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator (dropout masks, default initialisation) for the block
    only; the caller's random state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


AMP_CHOICES = ("off", "bf16", "fp16")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
    one that this machine does not have is a :class:`UserError`."""
    from autoprune.errors import UserError

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}; valid choices: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {spec!r}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {spec!r}: MPS is not available on this machine (use --device cpu or auto)")
    elif device.type != "cpu":
        raise UserError(f"unknown device {spec!r}; valid choices: auto, cpu, cuda, cuda:N, mps")
    return device


def autocast(device: torch.device, amp: str):  # noqa: ANN201 - a context manager
    """Mixed precision for the block: bf16 or fp16 autocast on CUDA; nothing elsewhere."""
    if amp == "off" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """Loss scaling, needed with fp16 autocast on CUDA only."""
    if amp == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True)
class Runtime:
    """Where and how a command computes: the device every model and batch lives on, autocast,
    and DataLoader worker processes (0 for data held in memory)."""

    device: torch.device = torch.device("cpu")
    amp: str = "off"
    workers: int = 0

    @property
    def amp_in_effect(self) -> str:
        return self.amp if self.device.type == "cuda" else "off"

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, amp {self.amp_in_effect}, {torch.get_num_threads()} CPU thread(s)"
