"""Policy JSON: round trip, validation where it enters, deterministic re-application."""

import json

import pytest
import torch

from autoprune.core.importance import Calibration
from autoprune.core.policy import GroupChoice, Policy
from autoprune.core.prune import Pruner, apply_policy
from autoprune.errors import UserError
from autoprune.task.models import build_model


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10, in_channels=1, input_size=8).eval()


def calibration() -> Calibration:
    gen = torch.Generator().manual_seed(0)
    return Calibration(torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen), batch_size=16)


def mixed_policy(pruner: Pruner) -> Policy:
    methods = ["l1", "l2", "fpgm", "taylor", "activation", "random", "unstructured"]
    return Policy(
        {g.id: GroupChoice(methods[i % len(methods)], [0.25, 0.5, 0.75][i % 3]) for i, g in enumerate(pruner.groups)},
        distill=True,
    )


def test_json_round_trip(tmp_path, resnet):
    pruner = Pruner(resnet, torch.zeros(1, 1, 8, 8), ignored=["conv1", "fc"], calibration=calibration())
    _, resolved = pruner.apply(mixed_policy(pruner))
    resolved.save(tmp_path / "p.json")
    loaded = Policy.load(tmp_path / "p.json")
    assert loaded == resolved
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == "autoprune.policy" and data["version"] == 1
    g = data["groups"]["layers.3.conv1"]
    assert g["channels"] == 32 and g["kept"] == len(g["kept_indices"])


def test_reapplying_a_policy_is_bit_for_bit_identical(resnet):
    pruner_a = Pruner(resnet, torch.zeros(1, 1, 8, 8), ignored=["conv1", "fc"], calibration=calibration())
    pruner_b = Pruner(resnet, torch.zeros(1, 1, 8, 8), ignored=["conv1", "fc"], calibration=calibration())
    policy = mixed_policy(pruner_a)
    a, ra = pruner_a.apply(policy)
    b, rb = pruner_b.apply(policy)
    assert ra == rb
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # replaying the resolved policy (kept indices stored) needs no calibration data
    c, _ = apply_policy(resnet, ra, example_input=torch.zeros(1, 1, 8, 8))
    assert all(torch.equal(sa[k], v) for k, v in c.state_dict().items())
    # and the replayed model really is the smaller one: the stage-3 stream feeds fc
    stream = ra.groups["layers.6.shortcut.0"]
    assert stream.kept == round(64 * stream.keep) < 64
    assert c.fc.in_features == stream.kept < resnet.fc.in_features


def test_channel_counts_after_a_policy(resnet):
    pruner = Pruner(resnet, torch.zeros(1, 1, 8, 8), ignored=["conv1", "fc"], round_to=4, min_channels=8)
    policy = Policy({"layers.6.shortcut.0": GroupChoice("l1", 0.5), "layers.3.conv1": GroupChoice("l1", 0.1)})
    model, resolved = pruner.apply(policy)
    assert resolved.channels()["layers.6.shortcut.0"] == 32
    assert resolved.channels()["layers.3.conv1"] == 8  # 3.2 -> rounded to 4 -> raised to min 8
    assert model.fc.in_features == 32  # the whole residual stream of stage 3 shrank together
    assert all(model.layers[i].conv2.out_channels == 32 for i in (6, 7, 8))
    assert model.layers[3].conv1.out_channels == 8
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"format": "x"}, "not an autoprune policy"),
        ({"format": "autoprune.policy", "version": 9, "groups": {}}, "version 9 is not supported"),
        ({"format": "autoprune.policy", "version": 1, "groups": {"a": {"method": "l3", "keep": 0.5}}}, "unknown method 'l3'"),
        ({"format": "autoprune.policy", "version": 1, "groups": {"a": {"method": "l1", "keep": 1.5}}}, "keep 1.5 must be"),
        ({"format": "autoprune.policy", "version": 1, "groups": {"a": {"method": "l1", "keep": 0.5, "kept_indices": [3, 1]}}}, "ascending"),
    ],
)
def test_invalid_policies_are_rejected_with_the_reason(data, message):
    with pytest.raises(UserError, match=message):
        Policy.from_dict(data)


def test_policy_for_other_groups_names_the_valid_ones(resnet):
    pruner = Pruner(resnet, torch.zeros(1, 1, 8, 8), ignored=["conv1", "fc"])
    with pytest.raises(UserError, match="does not have; its prunable groups are: layers.0.conv1"):
        pruner.apply(Policy({"features.3": GroupChoice("l1", 0.5)}))


def test_corrupt_policy_file(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Policy.load(tmp_path / "p.json")
