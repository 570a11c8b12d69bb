"""Properties of the pure-torch routing core, on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hp_rl.core.errors import RoutingError
from hp_rl.routing import (
    AdaptedExpert,
    GateStatistics,
    HubPathway,
    KeepInit,
    NoisyTopKRouter,
    PathwayGenerator,
    balance_loss,
    content_keyed_normal,
    cv_squared,
    mlp_body,
    smooth_load,
)


def make_pathway(m: int = 4, k: int = 2, frozen: bool = True, noise: str = "learned", dim: int = 6) -> HubPathway:
    experts = {
        f"e{i}": AdaptedExpert(nn.Sequential(nn.Linear(dim, 8 + i), nn.ReLU()), 8 + i, 5, frozen=frozen)
        for i in range(m)
    }
    body, width = mlp_body(dim)
    return HubPathway(
        experts, PathwayGenerator(body, width, m, learned_noise=noise == "learned"), NoisyTopKRouter(m, k, noise=noise)
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("noise", ["learned", "fixed", "none"])
@pytest.mark.parametrize(("m", "k"), [(1, 1), (3, 1), (4, 2), (5, 5)])
def test_weights_sum_to_one_with_exactly_k_nonzeros(noise: str, m: int, k: int) -> None:
    router = NoisyTopKRouter(m, k, noise=noise)  # type: ignore[arg-type]
    logits = torch.randn(32, m)
    routes = router(logits, torch.randn(32, m), torch.randn(32, m))
    assert torch.allclose(routes.weights.sum(1), torch.ones(32))
    assert ((routes.weights > 0).sum(1) == k).all()
    assert routes.indices.shape == (32, k)


def test_top_k_then_softmax_hand_computed() -> None:
    router = NoisyTopKRouter(3, 2, noise="none")
    routes = router(torch.tensor([[1.0, 2.0, 3.0]]), None, None)
    e2, e3 = math.exp(2), math.exp(3)
    expected = torch.tensor([[0.0, e2 / (e2 + e3), e3 / (e2 + e3)]])
    assert torch.allclose(routes.weights, expected)
    assert routes.indices.tolist() == [[2, 1]]


def test_learned_noise_std_is_softplus_and_never_zero() -> None:
    router = NoisyTopKRouter(2, 1, noise="learned")
    clean = torch.zeros(1, 2)
    routes = router(clean, torch.tensor([[-50.0, 0.0]]), torch.ones(1, 2))
    assert routes.noise_std[0, 0] > 0  # floor: no division by zero in the load estimate
    assert torch.isclose(routes.noise_std[0, 1], torch.nn.functional.softplus(torch.tensor(0.0)) + 1e-2)
    assert torch.isfinite(routes.balance_loss)


def test_router_rejects_bad_k_and_noise() -> None:
    with pytest.raises(ValueError, match="k=0 is out of range"):
        NoisyTopKRouter(3, 0)
    with pytest.raises(ValueError, match="k=4 is out of range"):
        NoisyTopKRouter(3, 4)
    with pytest.raises(ValueError, match="noise_std > 0"):
        NoisyTopKRouter(3, 1, noise="fixed", noise_std=0.0)


def test_eval_without_noise_is_deterministic_and_keyed_noise_replays() -> None:
    pathway = make_pathway()
    x = torch.randn(16, 6)
    pathway.noise.enabled = False
    assert torch.equal(pathway(x).features, pathway(x).features)
    pathway.noise.enabled = True
    first = pathway(x)
    # The same observations, in another batch order, route and weigh exactly as before.
    order = torch.randperm(16)
    again = pathway(x[order])
    assert torch.equal(again.routes.weights, first.routes.weights[order])
    pathway.noise.epoch += 1
    assert not torch.equal(pathway(x).routes.noisy_logits, first.routes.noisy_logits)


def test_the_gate_owns_generator_router_and_noise_and_models_saved_before_it_load() -> None:
    pathway = make_pathway()
    x = torch.randn(16, 6)
    assert pathway.generator is pathway.gate.generator and pathway.noise is pathway.gate.noise
    pathway.gate.redraw()
    pathway.gate.noise.seed = 5
    state = pathway.state_dict()
    assert "gate.noise.state" in state and not any(k.startswith(("generator.", "noise.")) for k in state)
    # the keys a pathway had before its parts made a gate: a model saved then loads, noise state included
    old = {(k.removeprefix("gate.") if k.startswith("gate.") else k): v for k, v in state.items()}
    again = make_pathway()
    again.load_state_dict(old)
    assert (again.noise.seed, again.noise.epoch) == (5, 1)
    assert torch.equal(again.route(x).weights, pathway.route(x).weights)
    wrapped = nn.ModuleDict({"pathway": make_pathway()})  # under a prefix, as inside an SB3 policy
    wrapped.load_state_dict({f"pathway.{k}": v for k, v in old.items()})
    assert torch.equal(wrapped["pathway"].route(x).weights, pathway.route(x).weights)


def test_content_keyed_noise_is_standard_normal_and_batch_invariant() -> None:
    x = torch.randn(4000, 3)
    noise = content_keyed_normal(x, 8, seed=3, epoch=0)
    assert abs(float(noise.mean())) < 0.05
    assert abs(float(noise.std()) - 1.0) < 0.05
    assert torch.equal(content_keyed_normal(x[:7], 8, 3, 0), noise[:7])
    assert not torch.equal(content_keyed_normal(x[:7], 8, 4, 0), noise[:7])
    # Large epochs and seeds wrap instead of overflowing.
    assert torch.isfinite(content_keyed_normal(x[:2], 2, seed=2**70, epoch=10**6)).all()


@pytest.mark.parametrize("seed,epoch", [(3, 0), (-5, 17), (2**63 - 1, 10**6)])
def test_numpy_noise_path_matches_the_torch_path_bit_for_bit(seed: int, epoch: int) -> None:
    # CPU tensors take the numpy path; other devices the torch path: the noise must not depend on which.
    from hp_rl.routing.noise import _uniform_bits_numpy, _uniform_bits_torch

    x = torch.cat([torch.randn(64, 3, 5, 5), (torch.rand(64, 3, 5, 5) < 0.1).float(), torch.zeros(1, 3, 5, 5)])
    assert torch.equal(_uniform_bits_numpy(x, 7, seed, epoch), _uniform_bits_torch(x, 7, seed, epoch))


def test_balance_loss_zero_for_uniform_and_large_for_collapse() -> None:
    m = 4
    router = NoisyTopKRouter(m, 1, noise="none")
    uniform_logits = torch.eye(m).repeat(8, 1) * 5.0  # each expert wins a quarter of the rows
    uniform = router(uniform_logits, None, None)
    collapsed = router(torch.tensor([[5.0, 0.0, 0.0, 0.0]]).repeat(32, 1), None, None)
    assert float(uniform.balance_loss) < 1e-6
    assert float(collapsed.balance_loss) > 2.5  # cv^2 of (32, 0, 0, 0) is m - 1 = 3
    noisy = NoisyTopKRouter(m, 1, noise="fixed", noise_std=0.5)
    assert float(noisy(uniform_logits, None, torch.zeros(32, m)).balance_loss) < 1e-3
    assert float(noisy(collapsed.clean_logits, None, torch.zeros(32, m)).balance_loss) > 3.0


def test_cv_squared_and_smooth_load_by_hand() -> None:
    assert float(cv_squared(torch.tensor([1.0, 1.0, 1.0]))) == pytest.approx(0.0)
    assert float(cv_squared(torch.tensor([2.0, 0.0]))) == pytest.approx(1.0)
    # m=2, k=1: P(expert 0 routed) = Phi((clean_0 - noisy_1) / std_0).
    clean = torch.tensor([[1.0, 0.0]])
    noisy = torch.tensor([[1.5, 0.5]])
    std = torch.tensor([[2.0, 1.0]])
    load = smooth_load(clean, noisy, std, k=1)
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    assert float(load[0]) == pytest.approx(phi((1.0 - 0.5) / 2.0), abs=1e-6)
    assert float(load[1]) == pytest.approx(phi((0.0 - 1.5) / 1.0), abs=1e-6)
    assert float(balance_loss(torch.ones(3), torch.ones(3))) == pytest.approx(0.0)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_sparse_and_dense_computation_agree(k: int) -> None:
    pathway = make_pathway(m=4, k=k)
    x = torch.randn(20, 6)
    sparse = pathway(x)
    pathway.sparse = False
    dense = pathway(x)
    assert torch.allclose(sparse.features, dense.features, atol=1e-6)
    assert set(sparse.experts) == set(dense.experts)
    for name, batch in sparse.experts.items():
        assert torch.equal(batch.sample_index, dense.experts[name].sample_index)
        assert torch.allclose(batch.features, dense.experts[name].features, atol=1e-6)


def test_gradients_reach_generator_routed_experts_and_adapters_never_frozen_params() -> None:
    pathway = make_pathway(m=4, k=1, frozen=True)
    x = torch.randn(3, 6)
    out = pathway(x)
    (out.features.sum() + out.explore_loss).backward()
    routed = {name for name in out.experts}
    assert pathway.generator.logits.module.weight.grad is not None
    for name, expert in pathway.experts.items():
        assert isinstance(expert, AdaptedExpert)
        for p in expert.trunk.parameters():
            assert not p.requires_grad and p.grad is None
        adapter_grad = expert.output_adapter[0].weight.grad
        if name in routed:
            assert adapter_grad is not None and adapter_grad.abs().sum() > 0
        else:
            assert adapter_grad is None


def test_fine_tuned_trunk_gets_gradient() -> None:
    pathway = make_pathway(m=2, k=2, frozen=False)
    pathway(torch.randn(4, 6)).features.sum().backward()
    for expert in pathway.experts.values():
        assert all(p.grad is not None for p in expert.trunk.parameters())


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    trunk = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4))
    expert = AdaptedExpert(trunk, 4, 3, frozen=True)
    expert.train()
    assert not trunk[1].training
    before = trunk[1].running_mean.clone()
    expert(torch.randn(8, 6) * 5 + 3)
    assert torch.equal(trunk[1].running_mean, before)
    tuned = AdaptedExpert(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), 4, 3, frozen=False)
    tuned.train()
    assert tuned.trunk.module[1].training


def test_keep_init_is_not_reinitialised_by_apply() -> None:
    inner = nn.Linear(3, 3)
    before = inner.weight.detach().clone()
    outer = nn.Sequential(KeepInit(inner), nn.Linear(3, 3))
    outer.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert torch.equal(inner.weight, before)
    assert torch.equal(outer[1].weight, torch.zeros(3, 3))


def test_generator_starts_small_not_zero() -> None:
    body, width = mlp_body(6)
    generator = PathwayGenerator(body, width, 8)
    logits = generator(torch.randn(64, 6)).clean
    assert logits.abs().max() < 0.5
    assert logits.std() > 0  # zero logits would tie and always pick the same experts


def test_dense_router_uses_every_expert() -> None:
    router = NoisyTopKRouter(3, 1, noise="none", dense=True)
    routes = router(torch.randn(5, 3), None, None)
    assert ((routes.weights > 0).sum(1) == 3).all()


def test_gate_statistics_average_over_batches() -> None:
    stats = GateStatistics(3)
    router = NoisyTopKRouter(3, 2, noise="none")
    stats.update(router(torch.tensor([[3.0, 2.0, 0.0]]).repeat(6, 1), None, None))
    stats.update(router(torch.tensor([[0.0, 2.0, 3.0]]).repeat(2, 1), None, None))
    summary = stats.summary()
    assert summary.num_samples == 8
    assert torch.allclose(summary.usage, torch.tensor([6 / 8, 1.0, 2 / 8]))
    assert float(summary.usage.sum()) == pytest.approx(2.0)
    assert float(summary.mean_weight.sum()) == pytest.approx(1.0)
    assert summary.coactivation[0, 1] == pytest.approx(6 / 8)
    assert summary.coactivation[0, 2] == pytest.approx(0.0)
    assert 0 < summary.entropy < math.log(2) + 1e-9
    assert len(summary.routed_weights[1]) == 8
    stats.reset()
    with pytest.raises(ValueError):
        stats.summary()


def test_k1_generator_gets_task_gradient_and_weights_stay_one() -> None:
    pathway = make_pathway(m=3, k=1, noise="none")
    out = pathway(torch.randn(10, 6))
    assert torch.allclose(out.routes.weights.sum(1), torch.ones(10))
    out.features.sum().backward()  # task loss only, no exploration term
    grad = pathway.generator.logits.module.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_half_precision_experts_aggregate_in_float32() -> None:
    pathway = make_pathway(m=2, k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pathway(torch.randn(4, 6))
    assert out.features.shape == (4, 5)


def test_a_router_with_forced_experts_alone_routes_every_sample_through_them() -> None:
    # k=0 beside the base expert: no expert of the hub had the evidence to be routed
    router = NoisyTopKRouter(1, 0, noise="learned", num_forced=1, noise_cap=1.0)
    logits = torch.randn(6, 1, requires_grad=True)
    routes = router(logits, torch.randn(6, 1), torch.randn(6, 1))
    assert torch.equal(routes.weights, torch.ones(6, 1)) and routes.k == 1
    assert float(routes.balance_loss) == 0.0 and not router.noise_active
    with pytest.raises(RoutingError, match="route none"):
        NoisyTopKRouter(2, 1, num_forced=2)


def test_the_coactivation_picture_names_its_rows_and_keeps_its_values() -> None:
    import numpy as np

    from hp_rl.routing import coactivation_picture

    grid = np.array([[1.0, 0.25, 0.0], [0.25, 0.75, 0.5], [0.0, 0.5, 0.5]])
    picture = coactivation_picture(grid, ["asterix", "breakout_nosticky", "seaquest"], cell_px=16)
    height, width = picture.shape
    top, left = height - 3 * 16, width - 3 * 16
    assert left > 60 and top > 8  # room for the names and the column numbers
    cells = picture[top:, left:].reshape(3, 16, 3, 16).mean(axis=(1, 3))
    np.testing.assert_allclose(cells, grid, atol=1 / 255)
    assert (picture[:top, :] < 0.2).any() and (picture[top:, : left - 2] < 0.2).any()  # black text in both margins


def test_build_pathway_routes_forced_experts_keys_noise_and_adds_preferences_in_turn() -> None:
    from hp_rl.routing import GateConfig, build_pathway

    experts = {name: nn.Linear(6, 4) for name in ("a", "b", "c", "base")}
    gate = GateConfig(k=1, noise="none", num_forced=1, keyed_noise=False, noise_seed=7)
    pathway = build_pathway(experts, (6,), gate, [{"b": 1.0}, {"b": 0.5, "base": 2.0}], preference_scale=4.0)
    bias = pathway.generator.logits.module.bias
    torch.testing.assert_close(bias, torch.tensor([0.0, 6.0, 0.0, 8.0]))  # 4 x (1 + 0.5) for b, 4 x 2 for base
    routes = pathway.route(torch.randn(5, 6))
    assert routes.weights[:, 3].gt(0).all()  # the forced expert, on every sample
    assert (routes.weights[:, :3] > 0).sum(dim=1).eq(1).all()  # and k=1 of the others
    assert routes.indices[:, 0].eq(1).all()  # the preferred one
    assert not pathway.noise.keyed and pathway.noise.seed == 7 and not pathway.noise.enabled
    image = build_pathway({"x": nn.Conv2d(3, 2, 3)}, (3, 10, 10), GateConfig(k=1))
    assert image.noise.keyed and image.noise.enabled  # a CNN generator body for image inputs
