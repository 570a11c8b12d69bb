"""Fused expert execution gives the outputs and gradients of sparse dispatch, and keeps saving and sharing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hp_rl.rl.extractor import HubPathwayExtractor


def _small_frame_hub(m: int, channels: int) -> dict[str, Any]:
    return {
        "experts": [
            {"name": f"e{i}", "source": "random", "arch": "small_frame_cnn", "input_shape": [channels, 10, 10]}
            for i in range(m)
        ]
    }


CASES: dict[str, tuple[spaces.Box, dict[str, Any], dict[str, Any]]] = {
    # Same channels: the first convolution of all experts reads one shared input.
    "minatar-identity": (spaces.Box(0, 1, (4, 10, 10), np.float32), _small_frame_hub(4, 4), {}),
    # 10 observed channels into 4-channel experts: a channel map each, then grouped convolutions.
    "minatar-channel-map": (spaces.Box(0, 1, (10, 10, 10), np.float32), _small_frame_hub(3, 4), {}),
    # NatureCNN experts reached through the resize adapter; a base expert of another architecture beside.
    "resize+base": (
        spaces.Box(0, 1, (4, 10, 10), np.float32),
        {
            "experts": [
                {"name": f"n{i}", "source": "random", "arch": "nature_cnn", "input_shape": [4, 36, 36]}
                for i in range(2)
            ]
        },
        {"base_expert": True, "k": 1},
    ),
    "vector-mlp": (
        spaces.Box(-1, 1, (6,), np.float32),
        {"experts": [{"name": f"v{i}", "source": "random", "arch": "mlp", "input_shape": [4]} for i in range(4)]},
        {},
    ),
    "output-aggregation": (
        spaces.Box(0, 1, (4, 10, 10), np.float32),
        _small_frame_hub(4, 4),
        {"aggregation": "output", "num_actions": 3},
    ),
}


def _pair(case: str, frozen: bool) -> tuple[HubPathwayExtractor, HubPathwayExtractor]:
    space, hub, kwargs = CASES[case]
    options = {"k": 2, "freeze_experts": frozen, "features_dim": 32, **kwargs}
    torch.manual_seed(0)
    fused = HubPathwayExtractor(space, hub=hub, execution="fused", **options)
    torch.manual_seed(0)
    sparse = HubPathwayExtractor(space, hub=hub, execution="sparse", **options)
    sparse.load_state_dict(fused.state_dict())
    return fused, sparse


def _observations(space: spaces.Box, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if len(space.shape) == 3:
        return (torch.rand((batch, *space.shape), generator=generator) < 0.2).float()
    return torch.randn((batch, *space.shape), generator=generator)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "fine-tuned"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_execution_matches_sparse_dispatch_in_outputs_and_gradients(case: str, frozen: bool, device: str) -> None:
    fused, sparse = _pair(case, frozen)
    fused, sparse = fused.to(device), sparse.to(device)
    x = _observations(CASES[case][0], 24).to(device)
    out_fused, out_sparse = fused(x), sparse(x)
    assert fused.pathway.fused_groups(x), "the case must exercise a fused group"
    torch.testing.assert_close(out_fused, out_sparse, atol=1e-5, rtol=1e-5)
    # The per-expert results (the exploitation loss reads them) are the same rows and values.
    a, b = fused.last_output.experts, sparse.last_output.experts  # type: ignore[union-attr]
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name].sample_index, b[name].sample_index)
        torch.testing.assert_close(a[name].features, b[name].features, atol=1e-5, rtol=1e-5)
    weights = torch.randn(out_fused.shape[1], device=device)
    (out_fused @ weights).sum().backward()
    (out_sparse @ weights).sum().backward()
    grads_fused = {n: p.grad for n, p in fused.named_parameters() if p.requires_grad}
    grads_sparse = {n: p.grad for n, p in sparse.named_parameters() if p.requires_grad}
    assert grads_fused.keys() == grads_sparse.keys()
    trunk_grads = [n for n, g in grads_fused.items() if ".trunk." in n and ".base." not in n and g is not None]
    assert bool(trunk_grads) == (not frozen)
    for name, grad in grads_fused.items():
        other = grads_sparse[name]
        if grad is None or other is None:
            assert grad is None or not grad.abs().any(), name
            assert other is None or not other.abs().any(), name
            continue
        torch.testing.assert_close(grad, other, atol=1e-5, rtol=1e-4, msg=name)


def test_auto_fuses_acting_batches_and_dispatches_large_training_batches_sparsely() -> None:
    from hp_rl.routing.fused import fusion_pays

    fused, _ = _pair("minatar-identity", True)
    group = fused.pathway.fused_groups(_observations(CASES["minatar-identity"][0], 2))[0]
    assert group.flops_per_row > 0
    assert fusion_pays(group, 8, "auto") and not fusion_pays(group, 4096, "auto")
    assert fusion_pays(group, 4096, "fused") and not fusion_pays(group, 8, "sparse")


def test_cached_stacks_follow_weight_updates_and_loading() -> None:
    # Acting under no_grad reads cached stacks; an optimizer step or a load must not leave them stale.
    fused, sparse = _pair("minatar-identity", False)
    x = _observations(CASES["minatar-identity"][0], 8)
    with torch.no_grad():
        fused(x)
    optimizer = torch.optim.SGD(fused.parameters(), lr=0.5)
    fused(x).sum().backward()
    optimizer.step()
    sparse.load_state_dict(fused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), sparse(x), atol=1e-5, rtol=1e-5)
        fresh, _ = _pair("minatar-identity", False)
        fused.load_state_dict(fresh.state_dict())
        sparse.load_state_dict(fresh.state_dict())
        torch.testing.assert_close(fused(x), sparse(x), atol=1e-5, rtol=1e-5)


def test_modules_that_cannot_be_lowered_stay_on_sparse_dispatch() -> None:
    from torch import nn

    from hp_rl.routing.fused import fuse_experts

    experts = [nn.Sequential(nn.Linear(4, 3), nn.GELU()) for _ in range(3)]  # GELU has no lowering
    assert fuse_experts(experts, torch.randn(2, 4)) == []
    linear = [nn.Sequential(nn.Linear(4, 3), nn.ReLU()) for _ in range(3)] + [nn.Linear(5, 3)]
    groups = fuse_experts(linear, torch.randn(2, 4))
    assert [g.columns for g in groups] == [[0, 1, 2]]
