"""Fused expert execution: experts of one architecture run as one batched call instead of one call each.

On a CPU the routed experts of a small batch (one observation per environment while acting) cost mostly
per-call overhead: every module call, every convolution and every matrix product pays microseconds of
dispatch whatever its size. Experts whose layers match one for one are *lowered* to a list of primitive
operations (:class:`Op`) and run together: a convolution of all g experts on a shared input is one
convolution with the experts' filters stacked as output channels, later convolutions are one grouped
convolution (``groups=g``), linear layers one ``F.linear`` (shared input) or ``baddbmm`` (per-expert
inputs). Every expert then runs on every row of the batch (dense), so fusing pays at small batches and
sparse dispatch (each expert only on its routed rows) at large ones: :func:`fusion_pays` decides.

The fused call reads the experts' own parameters, so gradients, optimizer state, ``state_dict`` and
frozen trunks shared between extractors are exactly as with sparse dispatch. Stacked copies of parameters
that need no gradient (frozen trunks, or any parameter while acting under ``no_grad``) are cached and
rebuilt when a parameter changes (its storage or its in-place version counter).

Which modules can be lowered is open: :func:`register_lowering` adds a module type (the hub registers its
trunk architectures and input adapters). A module of any other type keeps its experts on sparse dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.routing.experts import AdaptedExpert, HeadedExpert
from hp_rl.routing.init import KeepInit

__all__ = [
    "Execution",
    "Op",
    "FusedGroup",
    "register_lowering",
    "lower",
    "fuse_experts",
    "fusion_pays",
    "FUSED_MAX_FLOPS",
]

Execution = Literal["auto", "fused", "sparse"]

# Fused dense execution computes every expert of a group on every row; sparse dispatch computes each
# expert on its routed rows but pays one call chain per expert. Measured on one CPU thread (MinAtar
# small-frame CNN experts, 0.4 MFLOP per row): fused is 2.9x faster at 8 rows and slower from ~128 rows; a
# NatureCNN expert (19 MFLOP per row) gains nothing from 8 rows on. The rule fuses while one expert's dense
# work on the batch stays under this many FLOPs.
FUSED_MAX_FLOPS = 32e6


@dataclass(frozen=True)
class Op:
    """One primitive operation of a lowered expert.

    :param kind: ``float``, ``relu``, ``tanh``, ``flatten``, ``resize``, ``conv``, ``linear`` or ``heads``.
    :param module: the layer holding the parameters (``conv``, ``linear``, ``heads``) or doing the work
        (``resize``); ``None`` for parameter-free operations.
    :param key: everything two experts' operations must share to run as one (kind, shapes, strides).
    """

    kind: str
    module: nn.Module | None = None
    key: tuple[Any, ...] = field(default=())


Lowering = Callable[[nn.Module], "list[Op] | None"]
_LOWERINGS: dict[type[nn.Module], Lowering] = {}


def register_lowering(module_type: type[nn.Module], lowering: Lowering) -> None:
    """Teach fused execution a module type: ``lowering(module)`` returns its operations, or ``None``."""
    _LOWERINGS[module_type] = lowering


def lower(module: nn.Module) -> list[Op] | None:
    """The operations ``module`` computes, in order, or ``None`` when some part cannot be lowered."""
    lowering = _LOWERINGS.get(type(module))
    return lowering(module) if lowering is not None else None


def lower_all(modules: Sequence[nn.Module]) -> list[Op] | None:
    """The operations of ``modules`` applied one after the other, or ``None``."""
    ops: list[Op] = []
    for module in modules:
        part = lower(module)
        if part is None:
            return None
        ops.extend(part)
    return ops


def _lower_conv(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, nn.Conv2d)
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    key = ("conv", tuple(module.weight.shape), module.bias is not None, module.stride, module.padding, module.dilation)
    return [Op("conv", module, key)]


def _lower_linear(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, nn.Linear)
    return [Op("linear", module, ("linear", tuple(module.weight.shape), module.bias is not None))]


def _lower_flatten(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, nn.Flatten)
    return [Op("flatten", key=("flatten",))] if (module.start_dim, module.end_dim) == (1, -1) else None


def _lower_adapted(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, AdaptedExpert)
    return lower_all([module.input_adapter, module.trunk, module.output_adapter])


def _lower_headed(module: nn.Module) -> list[Op] | None:
    assert isinstance(module, HeadedExpert)
    if module.policy_dim is not None:
        return None  # a separate critic network: two towers, not one chain of operations
    body = lower_all([module.input_adapter, module.trunk])
    if body is None:
        return None
    action, value = module.action_head.module, module.value_head.module
    if not isinstance(action, nn.Linear) or not isinstance(value, nn.Linear):
        return None
    key = ("heads", module.mix, tuple(action.weight.shape), tuple(value.weight.shape))
    return [*body, Op("heads", module, key)]


register_lowering(nn.Sequential, lambda m: lower_all(list(m.children())))
register_lowering(nn.Identity, lambda m: [])
register_lowering(KeepInit, lambda m: lower(m.module))  # type: ignore[arg-type]
register_lowering(nn.Conv2d, _lower_conv)
register_lowering(nn.Linear, _lower_linear)
register_lowering(nn.ReLU, lambda m: [Op("relu", key=("relu",))])
register_lowering(nn.Tanh, lambda m: [Op("tanh", key=("tanh",))])
register_lowering(nn.Flatten, _lower_flatten)
register_lowering(AdaptedExpert, _lower_adapted)
register_lowering(HeadedExpert, _lower_headed)


class FusionError(RuntimeError):
    """A lowered group cannot run fused (a layout the fused operations do not cover)."""


class FusedGroup:
    """Experts with matching operations, run as one call on a whole batch.

    Not a module: it holds no parameters of its own and reads the experts' at each call.

    :param columns: the experts' columns in the pathway's weights.
    :param ops: each expert's operations (same length and keys for all).
    """

    def __init__(self, columns: Sequence[int], ops: Sequence[Sequence[Op]]) -> None:
        self.columns = list(columns)
        self.ops = [list(expert_ops) for expert_ops in ops]
        self.size = len(self.columns)
        self.flops_per_row = 0.0  # one expert on one row, measured by the first call
        self._cache: dict[tuple[int, str], tuple[tuple[Any, ...], Tensor]] = {}

    def _stacked(self, step: int, path: str, build: Callable[[list[Tensor]], Tensor]) -> Tensor | None:
        """``build`` of the tensor at ``path`` (e.g. ``weight``) in every expert's ``step``-th operation.

        Cached while no gradient is needed; ``None`` where the layers have no such tensor (no bias).
        """
        params = [_attribute(expert_ops[step].module, path) for expert_ops in self.ops]
        if params[0] is None:
            return None
        tensors = [p for p in params if p is not None]
        if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
            return build(tensors)
        # data_ptr catches replaced storage (.to, load_state_dict with assign), _version in-place updates.
        version = tuple((p.data_ptr(), p._version) for p in tensors)
        cached = self._cache.get((step, path))
        if cached is not None and cached[0] == version:
            return cached[1]
        with torch.no_grad():
            value = build(tensors)
        self._cache[(step, path)] = (version, value)
        return value

    def __call__(self, x: Tensor) -> Tensor:
        """:param x: ``(B, ...)`` pathway input. :return: ``(g, B, d)`` every expert's output on every row."""
        g, batch = self.size, x.shape[0]
        t, split, flops = x, False, 0.0
        for step, op in enumerate(self.ops[0]):
            if op.kind == "float":
                t = t.float()
            elif op.kind == "relu":
                t = F.relu(t)
            elif op.kind == "tanh":
                t = torch.tanh(t)
            elif op.kind == "resize":
                assert op.module is not None
                t = op.module(t)  # per channel, so it serves the stacked channels of every expert alike
            elif op.kind == "flatten":
                if not split:
                    t = t.flatten(1)
                elif t.dim() == 4:
                    t = t.reshape(batch, g, -1).transpose(0, 1)
            elif op.kind == "conv":
                t, flops = self._conv(step, op, t, split, flops)
                split = True
            elif op.kind == "linear":
                t = self._linear(step, t, split)
                assert isinstance(op.module, nn.Linear)
                flops += 2.0 * op.module.weight.numel()
                split = True
            elif op.kind == "heads":
                t = self._heads(step, op, t, split)
                split = True
            else:
                raise FusionError(f"unknown operation {op.kind!r}")
        if not split or t.dim() != 3:
            raise FusionError("a fused group must end in per-expert vectors")
        self.flops_per_row = flops
        return t

    def _conv(self, step: int, op: Op, t: Tensor, split: bool, flops: float) -> tuple[Tensor, float]:
        conv = op.module
        assert isinstance(conv, nn.Conv2d)
        if t.dim() != 4:
            raise FusionError("convolution of a non-image")
        weight = self._stacked(step, "weight", torch.cat)
        bias = self._stacked(step, "bias", torch.cat)
        assert weight is not None
        out = F.conv2d(t, weight, bias, conv.stride, conv.padding, conv.dilation, groups=self.size if split else 1)
        flops += 2.0 * conv.weight[0].numel() * out[0, : conv.out_channels].numel()
        return out, flops

    def _linear(self, step: int, t: Tensor, split: bool, layer: str = "") -> Tensor:
        """Every expert's linear layer: the operation's module, or its sub-module at path ``layer``."""
        if t.dim() == 4:
            raise FusionError("linear layer on an image")
        weight_path, bias_path = (f"{layer}.weight", f"{layer}.bias") if layer else ("weight", "bias")
        if not split:  # one input for all: one product with the experts' rows stacked
            weight = self._stacked(step, weight_path, torch.cat)
            bias = self._stacked(step, bias_path, torch.cat)
            assert weight is not None
            return F.linear(t, weight, bias).view(t.shape[0], self.size, -1).transpose(0, 1)
        weight_t = self._stacked(step, weight_path, lambda ps: torch.stack(ps).transpose(1, 2).contiguous())
        bias = self._stacked(step, bias_path, lambda ps: torch.stack(ps)[:, None, :])
        assert weight_t is not None
        return torch.bmm(t, weight_t) if bias is None else torch.baddbmm(bias, t, weight_t)

    def _heads(self, step: int, op: Op, t: Tensor, split: bool) -> Tensor:
        head = op.module
        assert isinstance(head, HeadedExpert)
        logits = self._linear(step, t, split, "action_head.module")
        value = self._linear(step, t, split, "value_head.module")
        policy = F.softmax(logits, dim=-1) if head.mix == "probs" else logits
        return torch.cat([policy, value], dim=-1)


def _attribute(module: nn.Module | None, path: str) -> Tensor | None:
    value: Any = module
    for part in path.split("."):
        value = getattr(value, part)
    return value


def fuse_experts(experts: Sequence[nn.Module], probe: Tensor) -> list[FusedGroup]:
    """Groups of two or more experts that can run as one call, checked on ``probe``.

    :param experts: the pathway's experts in column order.
    :param probe: ``(b, ...)`` a few pathway inputs; each group's fused output must equal its experts'
        own outputs on them (1e-5), or the group is left to sparse dispatch.
    """
    by_key: dict[tuple[Any, ...], list[tuple[int, list[Op]]]] = {}
    for column, expert in enumerate(experts):
        ops = lower(expert)
        if ops:
            by_key.setdefault(tuple(op.key for op in ops), []).append((column, ops))
    groups = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        group = FusedGroup([c for c, _ in members], [ops for _, ops in members])
        try:
            with torch.no_grad():
                fused = group(probe)
                own = torch.stack([experts[c](probe) for c in group.columns])
        except (FusionError, RuntimeError):
            continue
        if fused.shape == own.shape and torch.allclose(fused, own.to(fused.dtype), atol=1e-5, rtol=1e-4):
            groups.append(group)
    return groups


def fusion_pays(group: FusedGroup, batch: int, execution: Execution) -> bool:
    """Whether ``group`` runs fused on a batch of ``batch`` rows under ``execution``."""
    if execution == "fused":
        return True
    if execution == "sparse":
        return False
    return batch * group.flops_per_row <= FUSED_MAX_FLOPS
