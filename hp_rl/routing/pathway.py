"""Hub-Pathway: generator -> noisy top-k routes -> sparse expert dispatch -> weighted aggregation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hp_rl.core.errors import RoutingError
from hp_rl.routing.fused import Execution, FusedGroup, fuse_experts, fusion_pays
from hp_rl.routing.gate import Gate, NoiseSource
from hp_rl.routing.generator import PathwayGenerator
from hp_rl.routing.router import Routes

__all__ = ["ExpertBatch", "PathwayOutput", "HubPathway"]

# Where the gate's parts were saved before they had a gate: loaded models written then still load.
_BEFORE_THE_GATE = ("generator.", "noise.")


@dataclass(frozen=True)
class ExpertBatch:
    """What one expert computed on the samples routed to it.

    :param sample_index: ``(n,)`` rows of the batch routed to this expert.
    :param features: ``(n, d)`` the expert's adapted output on those rows.
    :param weight: ``(n,)`` the pathway weight of this expert on those rows.
    """

    sample_index: Tensor
    features: Tensor
    weight: Tensor


@dataclass(frozen=True)
class PathwayOutput:
    """Result of one Hub-Pathway forward pass.

    :param features: ``(B, d)`` aggregated features ``sum_i w_i z_i``.
    :param routes: the routing decision and its balance terms.
    :param experts: per expert name, what it computed on its routed samples (absent when none routed).
    :param expert_names: expert names in column order of ``routes.weights``.
    """

    features: Tensor
    routes: Routes
    experts: Mapping[str, ExpertBatch]
    expert_names: tuple[str, ...]

    @property
    def explore_loss(self) -> Tensor:
        """Scalar exploration (load balance) loss, computed when first asked for."""
        return self.routes.balance_loss


class _ExpertBatches(Mapping[str, ExpertBatch]):
    """Per-expert results; those of fused experts are cut out of their dense output only when asked for."""

    def __init__(
        self,
        ready: dict[str, ExpertBatch],
        fused: dict[str, tuple[int, Tensor]],
        weights: Tensor,
        names: tuple[str, ...],
    ) -> None:
        self._ready = ready
        self._fused = fused  # name -> (column, (B, d) output on every row)
        self._weights = weights
        self._names = names

    def _resolve(self) -> None:
        if not self._fused:
            return
        for name, (column, z) in self._fused.items():
            index = (self._weights[:, column] > 0).nonzero(as_tuple=True)[0]
            if index.numel():
                self._ready[name] = ExpertBatch(index, z.index_select(0, index), self._weights[index, column])
        self._fused = {}
        self._ready = {name: self._ready[name] for name in self._names if name in self._ready}  # column order

    def __getitem__(self, name: str) -> ExpertBatch:
        self._resolve()
        return self._ready[name]

    def __iter__(self) -> Iterator[str]:
        self._resolve()
        return iter(self._ready)

    def __len__(self) -> int:
        self._resolve()
        return len(self._ready)


class HubPathway(nn.Module):
    """Routes each sample through the top-k experts of a hub and aggregates their outputs.

    Only the routed experts run on a sample (sparse dispatch), so compute grows with k, not m.

    :param experts: name -> module mapping ``(B, ...)`` inputs to ``(B, d)`` features, all the same d.
    :param generator: the pathway generator (m outputs, in the order of ``experts``).
    :param router: a :class:`~hp_rl.routing.router.NoisyTopKRouter` for m experts. Generator, router and the
        routing noise make the pathway's :class:`~hp_rl.routing.gate.Gate` (``pathway.gate``).
    :param sparse: run experts only on routed samples; ``False`` runs every expert on every sample and
        masks by the weights (same output, for testing and the dense baseline).
    :param execution: how experts of one architecture run (:mod:`hp_rl.routing.fused`): ``"fused"`` as one
        batched call on every row, ``"sparse"`` one call per expert on its routed rows, ``"auto"`` fused
        while the batch is small enough for that to pay (:data:`~hp_rl.routing.fused.FUSED_MAX_FLOPS`).
        Outputs and gradients are the same either way (to float rounding).
    :param noise: where the routing noise comes from (default: content-keyed, seed 0).
    """

    def __init__(
        self,
        experts: Mapping[str, nn.Module],
        generator: PathwayGenerator,
        router: nn.Module,
        sparse: bool = True,
        execution: Execution = "auto",
        noise: NoiseSource | None = None,
    ) -> None:
        super().__init__()
        if not experts:
            raise RoutingError("A hub needs at least one expert.")
        num = getattr(router, "num_experts", None)
        if num != len(experts):
            raise RoutingError(f"The router expects {num} experts but the hub has {len(experts)}.")
        self.experts = nn.ModuleDict(dict(experts))
        self.gate = Gate(generator, router, noise)
        self.sparse = sparse
        self.execution: Execution = execution
        # Built at the first forward that may fuse (it checks each group on real inputs); rebuilt when the
        # experts are other objects (a deep copy of the pathway).
        self._fused_groups: list[FusedGroup] = []
        self._fused_for: tuple[int, ...] | None = None
        self.register_load_state_dict_pre_hook(_keys_before_the_gate)

    @property
    def generator(self) -> PathwayGenerator:
        """The gate's generator."""
        generator = self.gate.generator
        assert isinstance(generator, PathwayGenerator)
        return generator

    @property
    def router(self) -> nn.Module:
        """The gate's router."""
        return self.gate.router

    @property
    def noise(self) -> NoiseSource:
        """The gate's routing noise."""
        return self.gate.noise

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Names in the column order of the pathway weights."""
        return tuple(self.experts.keys())

    def route(self, x: Tensor) -> Routes:
        """Routing decision only. :param x: ``(B, ...)`` inputs."""
        routes: Routes = self.gate(x)
        return routes

    def fused_groups(self, probe: Tensor) -> list[FusedGroup]:
        """The groups of experts that can run as one call (built once, checked on ``probe``'s first rows)."""
        modules = list(self.experts.values())
        identity = tuple(id(m) for m in modules)
        if self._fused_for != identity:
            self._fused_groups = fuse_experts(modules, probe[:2].detach())
            self._fused_for = identity
        return self._fused_groups

    def forward(self, x: Tensor) -> PathwayOutput:
        """:param x: ``(B, ...)`` inputs. :return: aggregated ``(B, d)`` features and routing details."""
        routes = self.route(x)
        names = self.expert_names
        weights = routes.weights
        combined: Tensor | None = None
        ready: dict[str, ExpertBatch] = {}
        fused: dict[str, tuple[int, Tensor]] = {}
        batch = x.shape[0]
        if self.sparse and self.execution != "sparse":
            for group in self.fused_groups(x):
                if not fusion_pays(group, batch, self.execution):
                    continue
                z = group(x)  # (g, B, d): every expert of the group on every row
                share = weights[:, group.columns].t().unsqueeze(-1).to(z.dtype)  # (g, B, 1), 0 where not routed
                part = (share * z).sum(0)
                combined = part if combined is None else combined + part.to(combined.dtype)
                for row, column in enumerate(group.columns):
                    fused[names[column]] = (column, z[row])
        routed = weights > 0  # (B, m)
        for column, name in enumerate(names):
            if name in fused:
                continue
            expert = self.experts[name]
            if self.sparse:
                index = routed[:, column].nonzero(as_tuple=True)[0]
                if index.numel() == 0:
                    continue
                z = expert(x.index_select(0, index))
            else:
                index = torch.arange(batch, device=x.device)
                z = expert(x)
            weight = weights.index_select(0, index)[:, column]
            if combined is None:
                combined = z.new_zeros(batch, z.shape[1])
            # Under autocast experts may return half precision while the weights stay float32.
            combined = combined.index_add(0, index, (weight[:, None] * z).to(combined.dtype))
            if self.sparse:
                ready[name] = ExpertBatch(index, z, weight)
            elif bool(routed[:, column].any()):
                keep = routed[index, column]
                ready[name] = ExpertBatch(index[keep], z[keep], weight[keep])
        assert combined is not None  # every row routes to k >= 1 experts
        return PathwayOutput(combined, routes, _ExpertBatches(ready, fused, weights, names), names)


def _keys_before_the_gate(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
    """Rename a pathway's saved ``generator.*`` and ``noise.*`` entries to the gate's (``gate.generator.*``)."""
    for key in [k for k in state_dict if k.startswith(tuple(prefix + part for part in _BEFORE_THE_GATE))]:
        state_dict[prefix + "gate." + key[len(prefix) :]] = state_dict.pop(key)
