"""Process-wide torch settings that library calls may change only for their own duration.

A user calling the Python API keeps their thread count and global random state: every
setting here is restored when the ``with`` block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
