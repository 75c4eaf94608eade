"""Shared tiny models and helpers. Everything here runs in milliseconds on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.testing import PG_BIN, PostgresServer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


class TwoConv(nn.Module):
    """conv(1->4) BN ReLU conv(4->6) BN ReLU avgpool linear(6->3) on 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="session")
def digits_dense():
    """(SmallCNN trained 2 epochs on digits, the digits task): shared, never modified."""
    from autoprune.core.loops import train_dense
    from autoprune.task.models import build_model
    from autoprune.task.splits import load_task

    task = load_task("digits", val_size=300)
    torch.manual_seed(0)
    model = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    train_dense(model, task.train, epochs=2, batch_size=64, progress=False)
    return model.eval(), task


@pytest.fixture
def two_conv() -> TwoConv:
    torch.manual_seed(0)
    return TwoConv().eval()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``autoprune ARGS`` as a user would, in ``cwd``."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autoprune", *args], cwd=cwd, env=full_env, capture_output=True,
        text=True, timeout=timeout,
    )


def run_in_process(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``autoprune ARGS`` through its entry point in this process (no ~4 s of imports), with
    what a subprocess run gives back: the exit code and the captured stdout and stderr."""
    import contextlib
    import io

    from autoprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    before, saved = os.getcwd(), {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(before)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["autoprune", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def pg_server():
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed")
    pytest.importorskip("psycopg2")
    server = PostgresServer()
    yield server
    server.close()
