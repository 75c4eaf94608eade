"""Training pieces: distillation loss, BN recalibration, checkpoints, ignore patterns."""

import pytest
import torch
import torch.nn.functional as F

from autoprune.core.batches import TensorSplit
from autoprune.core.checkpoints import load_weights, save_state
from autoprune.core.groups import resolve_ignore
from autoprune.core.loops import distillation_loss, recalibrate_bn
from autoprune.errors import UserError
from autoprune.task.models import build_model


def test_distillation_loss_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, s, y, weight=0.5, temperature=2.0), 0.5 * ce)
    kl = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t, y, weight=0.5, temperature=2.0), 0.5 * ce + 0.5 * 4 * kl)


def test_bn_recalibration_matches_the_data_statistics():
    bn = torch.nn.BatchNorm2d(3)
    x = torch.randn(512, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    recalibrate_bn(torch.nn.Sequential(bn), TensorSplit(x, torch.zeros(len(x))), num_batches=4, batch_size=128)
    assert torch.allclose(bn.running_mean, x.mean(dim=(0, 2, 3)), atol=0.05)
    assert torch.allclose(bn.running_var.sqrt(), x.std(dim=(0, 2, 3)), rtol=0.05)
    assert bn.momentum == 0.1


def test_checkpoints_round_trip_and_refuse_code(tmp_path):
    model = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    save_state(model, tmp_path / "m.pt", note="x")
    other = build_model("smallcnn", num_classes=10, in_channels=1, input_size=8)
    load_weights(other, tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="holds pickled Python objects .* never unpickles"):
        load_weights(other, tmp_path / "evil.pt")
    wrong = build_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    with pytest.raises(UserError, match="does not fit the model"):
        load_weights(wrong, tmp_path / "m.pt")


def test_ignore_patterns():
    model = build_model("resnet20", num_classes=10, in_channels=1, input_size=8)
    assert resolve_ignore(model, torch.zeros(1, 1, 8, 8)) == ["conv1", "fc"]
    assert "layers.8.conv1" in resolve_ignore(model, torch.zeros(1, 1, 8, 8), ["layers.8.*"])
    with pytest.raises(UserError, match="ignore pattern 'nothing.*' matches no module"):
        resolve_ignore(model, torch.zeros(1, 1, 8, 8), ["nothing.*"])
