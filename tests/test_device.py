"""Device plumbing, checked on the CPU (CI has no GPU; scripts/gpu_check.sh runs on one)."""

import pytest
import torch

from autoprune.core.device import (
    Runtime,
    autocast,
    grad_scaler,
    resolve_device,
    seeded,
    torch_threads,
)
from autoprune.errors import UserError


def test_resolve_device():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu'; valid choices: auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device 'cuda:1': CUDA is not available on this machine"):
            resolve_device("cuda:1")


def test_amp_only_on_cuda():
    cpu = torch.device("cpu")
    assert Runtime(device=cpu, amp="bf16").amp_in_effect == "off"
    assert grad_scaler(cpu, "fp16") is None
    with autocast(cpu, "fp16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32  # no autocast on the CPU


def test_threads_and_seeds_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1 if before != 1 else 2) as inside:
        assert torch.get_num_threads() == inside != before
    assert torch.get_num_threads() == before
    state = torch.random.get_rng_state()
    with seeded(3):
        a = torch.rand(3)
    with seeded(3):
        assert torch.equal(torch.rand(3), a)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_asking_for_cuda_without_one_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from autoprune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", "--dataset", "digits", "--budget-flops", "0.5", "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and len(err.strip().splitlines()) == 1
    assert main(["search", "--dataset", "digits", "--budget-flops", "0.5", "--amp", "fp32", "--quiet"]) == 2
    assert "unknown amp setting 'fp32'; valid choices: bf16, fp16, off" in capsys.readouterr().err


def test_a_trial_trains_and_scores_where_the_runtime_says(digits_dense, tmp_path, monkeypatch):
    """Trials prune copies on the CPU and train them on the runtime's device; the dense model the
    user passed is neither moved nor changed (every trial starts from the same weights)."""
    from autoprune.core.loops import model_device
    from autoprune.policy_search import objective as objective_module

    model, task = digits_dense
    before = {k: v.clone() for k, v in model.state_dict().items()}
    devices = []
    real = objective_module.finetune
    monkeypatch.setattr(objective_module, "finetune",
                        lambda m, *a, **k: devices.append(model_device(m).type) or real(m, *a, **k))
    import autoprune

    autoprune.search(model, (task.train.x, task.train.labels), (task.val.x, task.val.labels), task.example_input(),
                     budget_flops=0.5, storage=f"sqlite:///{tmp_path}/d.db", study="d", trials=2, finetune_steps=2,
                     progress=False, references=False, batch_size=64, threads=1, bn_batches=1, device="cpu")
    assert devices == ["cpu", "cpu"] and model_device(model).type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
