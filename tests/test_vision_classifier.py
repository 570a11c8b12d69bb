"""HubPathwayClassifier: routing weights, per-expert heads and their gradients, timm surface, hub sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hp_rl.hub import AdapterError
from hp_rl.vision import ExpertInputError, HubPathwayClassifier

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit (TorchScript experts)

SHAPE = (1, 8, 8)


class Flat(nn.Module):
    """A tiny expert ``(B, 1, 8, 8) -> (B, width)`` of its own feature width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x.flatten(1)))


def tiny(k: int = 2, num_experts: int = 4, **kwargs: object) -> HubPathwayClassifier:
    experts = {f"e{i}": Flat(4 + 3 * i) for i in range(num_experts)}  # experts differ in feature size
    return HubPathwayClassifier(experts, num_classes=3, k=k, image_shape=SHAPE, features_dim=6, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False])
def test_weights_sum_to_one_with_k_nonzeros(k: int, training: bool) -> None:
    model = tiny(k).train(training)
    output = model(torch.rand(16, *SHAPE))
    weights = output.weights
    assert weights.shape == (16, 4)
    torch.testing.assert_close(weights.sum(1), torch.ones(16))
    assert ((weights > 0).sum(1) == k).all()
    assert output.logits.shape == (16, 3)
    # The aggregated logits are the weighted sum of the routed heads' logits.
    manual = torch.zeros(16, 3)
    for name, expert in output.experts.items():
        column = model.expert_names.index(name)
        manual[expert.sample_index] += weights[expert.sample_index, column, None] * expert.logits
    torch.testing.assert_close(output.logits, manual)


def test_dense_mixture_routes_every_expert() -> None:
    model = tiny(dense=True).eval()
    weights = model(torch.rand(5, *SHAPE)).weights
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(5))


def test_exploitation_gradient_of_each_head_comes_only_from_its_routed_samples() -> None:
    model = tiny(k=1, num_experts=3).train()
    images = torch.rand(24, *SHAPE)
    targets = torch.randint(0, 3, (24,))
    output = model(images)
    model.losses(output, targets).exploit.backward(retain_graph=True)
    total_pairs = sum(int(e.sample_index.numel()) for e in output.experts.values())
    assert total_pairs == 24  # k = 1
    for name in model.expert_names:
        head = model.heads[name].weight
        routed = output.experts.get(name)
        if routed is None:
            assert head.grad is None or not head.grad.any()
            continue
        # The same gradient from the head's own cross-entropy on its routed samples alone ...
        z = model.pathway.experts[name](images[routed.sample_index]).detach()
        weight = head.detach().clone().requires_grad_(True)
        own = F.linear(z, weight) + model.head_bias.detach()
        expected = torch.autograd.grad(
            F.cross_entropy(own, targets[routed.sample_index], reduction="sum") / total_pairs, weight
        )[0]
        torch.testing.assert_close(head.grad, expected)
    # ... and relabelling samples routed elsewhere leaves a head's gradient unchanged.
    name = max(output.experts, key=lambda n: output.experts[n].sample_index.numel())
    others = torch.ones(24, dtype=torch.bool)
    others[output.experts[name].sample_index] = False
    relabelled = targets.clone()
    relabelled[others] = (relabelled[others] + 1) % 3
    before = model.heads[name].weight.grad.clone()
    model.zero_grad()
    model.losses(output, relabelled).exploit.backward()
    torch.testing.assert_close(model.heads[name].weight.grad, before)


def test_total_loss_combines_task_explore_and_exploit() -> None:
    model = tiny(explore_coef=0.3, exploit_coef=0.7).train()
    output = model(torch.rand(10, *SHAPE))
    targets = torch.randint(0, 3, (10,))
    losses = model.losses(output, targets)
    torch.testing.assert_close(losses.task, F.cross_entropy(output.logits, targets))
    torch.testing.assert_close(losses.total, losses.task + 0.3 * losses.explore + 0.7 * losses.exploit)
    losses.total.backward()
    assert model.pathway.generator.logits.module.weight.grad is not None  # the router learns too


def test_timm_surface_shapes_and_consistency() -> None:
    model = tiny(k=2).eval()
    images = torch.rand(7, *SHAPE)
    features = model.forward_features(images)
    assert model.num_features == 6
    assert features.shape == (7, 4, 6)
    assert ((features.abs().sum(2) > 0).sum(1) <= 2).all()  # only routed experts fill their slot
    logits = model.forward_head(features)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert logits.shape == (7, 3) and pre_logits.shape == (7, 6)
    output = model(images)
    torch.testing.assert_close(logits, output.logits)
    torch.testing.assert_close(pre_logits, output.pre_logits)
    model.reset_classifier(5)
    assert model.forward_head(model.forward_features(images)).shape == (7, 5)


def test_noise_only_in_training_mode() -> None:
    model = tiny(k=1).eval()
    images = torch.rand(32, *SHAPE)
    first, second = model(images), model(images)
    torch.testing.assert_close(first.weights, second.weights)
    assert not first.routes.noise_std.any()
    model.train()
    assert model(images).routes.noise_std.gt(0).all()


def test_the_noise_cap_bounds_vision_routing_noise_as_it_bounds_the_rl_extractor_s() -> None:
    images = torch.rand(32, *SHAPE)
    free = tiny(k=1, noise="fixed", noise_std=50.0).train()(images).routes
    capped = tiny(k=1, noise="fixed", noise_std=50.0, noise_cap=0.25).train()(images).routes
    assert torch.allclose(free.noise_std, torch.full_like(free.noise_std, 50.0))
    # at most a quarter of each image's spread of clean logits: the rule of the one pathway builder
    spread = capped.clean_logits.std(dim=1, keepdim=True, unbiased=False)
    assert torch.all(capped.noise_std <= 0.25 * spread + 1e-6) and capped.noise_std.max() < 1.0
    with pytest.raises(ValueError, match="noise_cap"):
        tiny(noise_cap=-1.0)


def test_bf16_autocast_forward_and_backward() -> None:
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.rand(6, *SHAPE))
        loss = model.losses(output, torch.randint(0, 3, (6,))).total
    loss.backward()
    assert output.logits.dtype == torch.float32


def test_experts_from_hub_sources(tmp_path: Path) -> None:
    """TorchScript, safetensors NatureCNN and an Atari-shaped (4x84x84) trunk take 1x12x12 grey images."""
    from safetensors.torch import save_file

    from hp_rl.hub.architectures import NatureCNNTrunk

    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10)))
    torch.jit.save(scripted, str(tmp_path / "ts.pt"))
    nature = NatureCNNTrunk(1, 36, 36, 24)
    metadata = {"arch": "nature_cnn", "input_shape": "[1, 36, 36]", "features_dim": "24"}
    save_file(nature.state_dict(), str(tmp_path / "nature.safetensors"), metadata=metadata)
    hub = {
        "experts": [
            {
                "name": "ts",
                "source": "torchscript",
                "path": str(tmp_path / "ts.pt"),
                "input_shape": [1, 16, 16],
                "features_dim": 10,
            },
            {"name": "nature", "source": "safetensors", "path": str(tmp_path / "nature.safetensors")},
            {"name": "atari", "source": "random", "arch": "nature_cnn", "input_shape": [4, 84, 84], "features_dim": 32},
        ]
    }
    model = HubPathwayClassifier(hub, num_classes=2, k=2, image_shape=(1, 12, 12), features_dim=8, freeze_experts=True)
    output = model.eval()(torch.rand(3, 1, 12, 12))
    assert output.logits.shape == (3, 2)
    torch.testing.assert_close(model.pathway.experts["nature"].trunk.module.trunk.cnn[0].weight, nature.cnn[0].weight)
    manifest = model.hub_manifest()
    assert [e["name"] for e in manifest["experts"]] == ["ts", "nature", "atari"]
    assert "ChannelMap" in manifest["experts"][2]["input_adapter"]  # 1 grey channel -> 4 stacked frames
    json.dumps(manifest)  # plain data
    groups = model.parameter_groups(1e-3)
    assert len(groups) == 1  # frozen trunks: nothing at a scaled rate


def test_expert_that_cannot_take_the_image_size(tmp_path: Path) -> None:
    fixed = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)))  # only 1x28x28 inputs
    torch.jit.save(fixed, str(tmp_path / "fixed.pt"))
    hub = {
        "experts": [
            {"name": "fixed", "source": "torchscript", "path": str(tmp_path / "fixed.pt"), "features_dim": 10},
            {"name": "other", "source": "random", "arch": "nature_cnn", "input_shape": [1, 36, 36]},
        ]
    }
    with pytest.raises(ExpertInputError, match=r"(?s)'fixed'.*1x12x12.*shapes cannot be multiplied.*input_shape"):
        HubPathwayClassifier(hub, 2, k=1, image_shape=(1, 12, 12))
    with pytest.raises(ExpertInputError, match="'bad'"):
        HubPathwayClassifier({"bad": nn.Linear(5, 3), "ok": Flat(4)}, 2, k=1, image_shape=SHAPE)
    vector = {"experts": [{"name": "mlp", "source": "random", "arch": "mlp", "input_shape": [4]}]}
    with pytest.raises(AdapterError, match="expects state vectors"):
        HubPathwayClassifier(vector, 2, k=1, image_shape=SHAPE)


def test_k_out_of_range() -> None:
    with pytest.raises(ValueError, match="k=5 is out of range"):
        tiny(k=5)


def test_options_are_checked_against_the_pathway_table() -> None:
    from hp_rl.hub.options import PathwayOptionError

    with pytest.raises(PathwayOptionError, match="HubPathwayClassifier option noise: 'bogus'"):
        HubPathwayClassifier("random:2", 3, noise="bogus", image_shape=(1, 36, 36))  # type: ignore[arg-type]
    with pytest.raises(PathwayOptionError, match="explore_coef: nan"):
        HubPathwayClassifier("random:2", 3, explore_coef=float("nan"), image_shape=(1, 36, 36))
