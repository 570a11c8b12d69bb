"""``HubPathwayClassifier``: Hub-Pathway for image classification, on the same routing core as the RL agent.

Each expert i of the hub maps an image to ``z_i = A_i(E_i(P_i(x)))`` of a common width d (an
:class:`~hp_rl.routing.AdaptedExpert`) and has its own linear classification head; the pathway generator
picks the top-k experts per image and the classifier's logits are the pathway-weighted sum of the routed
heads' logits. Training adds the exploration loss (load balance, from the router) and the exploitation
loss (each head's cross-entropy on the images routed to it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hp_rl.core.errors import ConfigError
from hp_rl.hub import (
    AdapterError,
    CheckpointError,
    ExpertSpec,
    HubExpert,
    HubSpec,
    HubSpecError,
    build_input_adapter,
    parse_hub,
)
from hp_rl.hub import load_expert as _load_expert
from hp_rl.hub.options import PathwayOptionError, check_pathway_options
from hp_rl.hub.trunks import load_hub_trunks, manifest_entry, trunk_parameter_groups
from hp_rl.routing import (
    AdaptedExpert,
    BalanceMode,
    GateConfig,
    NoiseMode,
    PathwayOutput,
    Routes,
    build_pathway,
)

__all__ = ["ClassifierLosses", "ClassifierOutput", "ExpertInputError", "ExpertLogits", "HubPathwayClassifier"]

HubArgument = str | Sequence[str] | Mapping[str, Any] | HubSpec


class ExpertInputError(AdapterError):
    """A hub expert cannot take the classifier's images (size, channels or kind)."""


class _Float32Expert(AdaptedExpert):
    """An :class:`AdaptedExpert` whose output is float32 even under autocast.

    The pathway adds ``weight * z`` (float32 weights) into a buffer of ``z``'s dtype; with half-precision
    ``z`` the types would disagree. Casting the small ``(n, d)`` output keeps mixed precision in the trunk.
    """

    def forward(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)`` images. :return: ``(B, d)`` float32 features."""
        return super().forward(x).float()


@dataclass(frozen=True)
class ExpertLogits:
    """One expert's head on the images routed to it.

    :param sample_index: ``(n,)`` rows of the batch routed to the expert.
    :param logits: ``(n, num_classes)`` the expert's own head's logits on those rows.
    :param weight: ``(n,)`` the expert's pathway weight on those rows.
    """

    sample_index: Tensor
    logits: Tensor
    weight: Tensor


@dataclass(frozen=True)
class ClassifierOutput:
    """Result of one :class:`HubPathwayClassifier` forward pass.

    :param logits: ``(B, num_classes)`` pathway-weighted sum of the routed experts' logits.
    :param pre_logits: ``(B, d)`` pathway-weighted sum of the routed experts' features.
    :param experts: per routed expert name, its head's logits on its images.
    :param pathway: the routing core's output (routes, per-expert features, exploration loss).
    """

    logits: Tensor
    pre_logits: Tensor
    experts: Mapping[str, ExpertLogits]
    pathway: PathwayOutput

    @property
    def routes(self) -> Routes:
        """The routing decision: ``weights`` ``(B, m)``, ``indices`` ``(B, k)``, importance, load."""
        return self.pathway.routes

    @property
    def weights(self) -> Tensor:
        """``(B, m)`` pathway weights; each row sums to 1 over exactly k experts."""
        return self.pathway.routes.weights

    @property
    def explore_loss(self) -> Tensor:
        """Scalar exploration (load balance) loss, before its coefficient."""
        return self.pathway.explore_loss


@dataclass(frozen=True)
class ClassifierLosses:
    """The training losses of one batch (scalars).

    :param total: ``task + explore_coef * explore + exploit_coef * exploit`` — backpropagate this.
    :param task: cross-entropy of the aggregated logits.
    :param explore: exploration (load balance) loss.
    :param exploit: mean cross-entropy of each routed expert's own head over its routed images.
    """

    total: Tensor
    task: Tensor
    explore: Tensor
    exploit: Tensor


def _short(error: BaseException) -> str:
    """The last line of an error message (TorchScript prepends long interpreter tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _is_module_mapping(hub: Any) -> bool:
    return isinstance(hub, Mapping) and bool(hub) and all(isinstance(v, nn.Module) for v in hub.values())


class HubPathwayClassifier(nn.Module):
    """Image classifier that routes each image through the top-k experts of a hub.

    timm-style surface: :meth:`forward_features` gives ``(B, m, d)`` pathway-weighted expert features
    (zeros for experts an image was not routed to), :meth:`forward_head` turns them into logits (or,
    with ``pre_logits=True``, into the ``(B, num_features)`` aggregated features), :attr:`num_features`
    is d. :meth:`forward` returns a :class:`ClassifierOutput` with the logits and everything the
    auxiliary losses need; :meth:`losses` computes them from the output and the targets.

    Head i is ``z -> W_i z + b`` with a bias shared by all heads. As the weights of an image sum to 1,
    ``sum_i w_i (W_i z_i + b) = sum_i W_i (w_i z_i) + b``: the aggregated logits are a function of the
    weighted features, so ``forward_head(forward_features(x))`` equals ``forward(x).logits``.

    Routing noise (exploration) is ordinary random noise in training mode and off in eval mode.

    :param hub: the experts: anything :func:`hp_rl.hub.parse_hub` accepts (a YAML path, a list of weight
        files, ``{"experts": [...]}``), or a mapping ``name -> module`` of loaded experts
        (:class:`~hp_rl.hub.HubExpert` or any module mapping images to ``(B, f)`` features).
    :param num_classes: number of classes.
    :param k: experts per image, ``1 <= k <= m``.
    :param image_shape: ``(C, H, W)`` of the input images; ``None`` takes the first expert's input shape.
    :param features_dim: common width d of the adapted expert features.
    :param freeze_experts: freeze the trunks (adapters, heads and generator still train); an expert's own
        ``frozen`` in the spec takes precedence.
    :param expert_lr_scale: learning-rate multiplier of fine-tuned trunks (see :meth:`parameter_groups`).
    :param noise: ``"learned"``, ``"fixed"`` or ``"none"``.
    :param noise_std: std for ``noise="fixed"``.
    :param explore_coef: weight of the exploration loss in :meth:`losses`.
    :param exploit_coef: weight of the exploitation loss in :meth:`losses`.
    :param balance: ``"cv2"`` (importance + load) or ``"switch"``.
    :param dense: route every image through all experts with softmax weights (the dense-mixture baseline).
    :param generator_hidden: width of the pathway generator's body.
    :param noise_cap: bound on the routing noise's std relative to the spread of each image's logits (``None``:
        unbounded), as in the RL extractor.
    :raises ExpertInputError: an expert that cannot take images of ``image_shape``.
    """

    def __init__(
        self,
        hub: HubArgument | Mapping[str, nn.Module],
        num_classes: int,
        k: int = 2,
        image_shape: tuple[int, int, int] | None = None,
        features_dim: int = 128,
        freeze_experts: bool = False,
        expert_lr_scale: float = 1.0,
        noise: NoiseMode = "learned",
        noise_std: float = 1.0,
        explore_coef: float = 0.01,
        exploit_coef: float = 0.5,
        balance: BalanceMode = "cv2",
        dense: bool = False,
        generator_hidden: int = 64,
        noise_cap: float | None = None,
    ) -> None:
        super().__init__()
        check_pathway_options(  # the table the RL extractor checks its options against
            {
                "k": k,
                "features_dim": features_dim,
                "freeze_experts": freeze_experts,
                "expert_lr_scale": expert_lr_scale,
                "noise": noise,
                "noise_std": noise_std,
                "explore_coef": explore_coef,
                "balance": balance,
                "dense": dense,
                "noise_cap": noise_cap,
            },
            lambda key: f"HubPathwayClassifier option {key}",
        )
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2 (a data set of two or more classes), got {num_classes}.")
        self.num_classes = num_classes
        self.num_features = features_dim
        self.explore_coef = explore_coef
        self.exploit_coef = exploit_coef
        self.lr_scales: dict[str, float] = {}
        self._noise_on = noise != "none"
        trunks, frozen_flags, shape = self._load_trunks(hub, image_shape, freeze_experts, expert_lr_scale)
        if not dense and not 1 <= k <= len(trunks):
            raise PathwayOptionError(
                f"k={k} is out of range for a hub of {len(trunks)} experts ({', '.join(trunks)}): "
                f"choose 1 <= k <= {len(trunks)}."
            )
        self.image_shape: tuple[int, int, int] = shape
        experts: dict[str, AdaptedExpert] = {}
        for name, (trunk, trunk_dim, adapter) in trunks.items():
            experts[name] = _Float32Expert(trunk, trunk_dim, features_dim, adapter, frozen_flags[name])
        self._check_experts(experts, shape)
        # supervised batches are never replayed: plain random noise rather than noise keyed to each image
        gate = GateConfig(
            k, noise, noise_std, noise_cap, balance, dense, keyed_noise=False, generator_hidden=generator_hidden
        )
        self.pathway = build_pathway(experts, shape, gate)
        self.heads = nn.ModuleDict({name: nn.Linear(features_dim, num_classes, bias=False) for name in experts})
        self.head_bias = nn.Parameter(torch.zeros(num_classes))

    # ------------------------------------------------------------------------------------------- building

    def _load_trunks(
        self,
        hub: HubArgument | Mapping[str, nn.Module],
        image_shape: tuple[int, int, int] | None,
        freeze_experts: bool,
        expert_lr_scale: float,
    ) -> tuple[dict[str, tuple[nn.Module, int, nn.Module | None]], dict[str, bool], tuple[int, int, int]]:
        loaded: dict[str, nn.Module] = {}
        frozen: dict[str, bool] = {}
        if _is_module_mapping(hub):
            assert isinstance(hub, Mapping)
            for name, module in hub.items():
                loaded[str(name)] = module
                frozen[str(name)] = freeze_experts
                if not freeze_experts:
                    self.lr_scales[str(name)] = expert_lr_scale
            self.hub_spec: HubSpec | None = None
        else:  # a hub spec: the pathway builder the RL extractor uses too
            spec = parse_hub(hub)
            self.hub_spec = spec
            try:  # without image_shape, the first expert's own input shape
                trunks, found = load_hub_trunks(
                    spec, image_shape, freeze_experts, expert_lr_scale, loader=self._load_one
                )
            except AdapterError as error:
                raise error if isinstance(error, ExpertInputError) else ExpertInputError(str(error)) from error
            if len(found) != 3:
                raise ExpertInputError(
                    f"Cannot tell the image shape from expert {spec.experts[0].name!r} (input shape {found}): "
                    "pass image_shape=(C, H, W)."
                )
            out: dict[str, tuple[nn.Module, int, nn.Module | None]] = {
                t.name: (t.trunk, t.features_dim, t.adapter) for t in trunks
            }
            self.lr_scales.update({t.name: t.lr_scale for t in trunks if t.lr_scale is not None})
            frozen.update({t.name: t.frozen for t in trunks})
            return out, frozen, (int(found[0]), int(found[1]), int(found[2]))
        if image_shape is None:
            image_shape = self._shape_from(next(iter(loaded.values())), next(iter(loaded)))
        shape = (int(image_shape[0]), int(image_shape[1]), int(image_shape[2]))
        modules: dict[str, tuple[nn.Module, int, nn.Module | None]] = {}
        for name, module in loaded.items():
            if isinstance(module, HubExpert):
                try:
                    adapter = build_input_adapter(shape, module.info, name)
                except AdapterError as error:
                    raise ExpertInputError(str(error)) from error
                modules[name] = (module, module.info.features_dim, adapter)
            else:
                modules[name] = (module, self._probe_width(module, name, shape), None)
        return modules, frozen, shape

    @staticmethod
    def _load_one(spec: ExpertSpec, image_shape: tuple[int, ...] | None, frozen: bool) -> HubExpert:
        name = spec.name
        try:
            return _load_expert(spec, image_shape)
        except (HubSpecError, CheckpointError):
            raise
        except (RuntimeError, ValueError) as error:
            shape = "unknown" if image_shape is None else "x".join(str(s) for s in image_shape)
            raise ExpertInputError(
                f"Expert {name!r} cannot be built for images of shape {shape}: {_short(error)}. Give the expert's own "
                "'input_shape' in the hub spec (images are then resized and channel-mapped to it)."
            ) from error

    @staticmethod
    def _shape_from(module: nn.Module, name: str) -> tuple[int, int, int]:
        info = getattr(module, "info", None)
        shape = tuple(info.input_shape) if info is not None else ()
        if len(shape) != 3:
            raise ExpertInputError(
                f"Cannot tell the image shape from expert {name!r} (input shape {shape or 'unknown'}): "
                "pass image_shape=(C, H, W)."
            )
        return int(shape[0]), int(shape[1]), int(shape[2])

    @staticmethod
    def _probe_width(module: nn.Module, name: str, shape: tuple[int, int, int]) -> int:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.zeros(1, *shape))
        except Exception as error:  # any module may fail on a wrong input in its own way
            raise ExpertInputError(
                f"Expert {name!r} cannot take images of shape {shape}: {type(error).__name__}: {_short(error)}"
            ) from error
        finally:
            module.train(was_training)
        if not isinstance(out, Tensor) or out.dim() < 2:
            raise ExpertInputError(f"Expert {name!r} must return (B, features) tensors, got {type(out).__name__}.")
        return int(out.flatten(1).shape[1])

    @staticmethod
    def _check_experts(experts: Mapping[str, AdaptedExpert], shape: tuple[int, int, int]) -> None:
        """Run each adapted expert once on a blank image, so a size mismatch fails here, clearly."""
        probe = torch.zeros(2, *shape)
        for name, expert in experts.items():
            was_training = expert.training
            expert.eval()
            try:
                with torch.no_grad():
                    expert(probe)
            except Exception as error:  # re-raised with the expert and shape named
                trunk = expert.inner_trunk
                expected = getattr(getattr(trunk, "info", None), "input_shape", None)
                assumed = expected is None or tuple(expected) == shape  # the spec gave no input shape of its own
                raise ExpertInputError(
                    f"Expert {name!r} cannot take images of shape {'x'.join(str(s) for s in shape)}"
                    + ("" if assumed else f" (it expects {tuple(expected or ())})")
                    + f": {type(error).__name__}: {_short(error)}"
                    + (
                        ". Give the expert's own 'input_shape' in the hub spec (images are then resized and "
                        "channel-mapped to it)."
                        if assumed
                        else ""
                    )
                ) from error
            finally:
                expert.train(was_training)

    # ------------------------------------------------------------------------------------------ properties

    @property
    def expert_names(self) -> tuple[str, ...]:
        """Expert names in routing column order."""
        return self.pathway.expert_names

    @property
    def num_experts(self) -> int:
        """m."""
        return len(self.pathway.experts)

    @property
    def k(self) -> int:
        """Experts per image."""
        return int(self.pathway.router.k)  # type: ignore[arg-type]

    def get_classifier(self) -> nn.ModuleDict:
        """The per-expert heads (timm-style)."""
        return self.heads

    def reset_classifier(self, num_classes: int) -> None:
        """New, freshly initialised heads for ``num_classes`` classes (timm-style)."""
        device = self.head_bias.device
        self.num_classes = num_classes
        self.heads = nn.ModuleDict(
            {name: nn.Linear(self.num_features, num_classes, bias=False) for name in self.expert_names}
        ).to(device)
        self.head_bias = nn.Parameter(torch.zeros(num_classes, device=device))

    # --------------------------------------------------------------------------------------------- forward

    def _route(self, x: Tensor) -> PathwayOutput:
        self.pathway.noise.enabled = self.training and self._noise_on
        output: PathwayOutput = self.pathway(x)
        return output

    def _head(self, name: str) -> nn.Linear:
        head = self.heads[name]
        assert isinstance(head, nn.Linear)
        return head

    def expert_head(self, name: str, features: Tensor) -> Tensor:
        """:param features: ``(n, d)`` adapted features of expert ``name``. :return: ``(n, num_classes)``."""
        logits: Tensor = self.heads[name](features)
        return logits + self.head_bias

    def forward(self, x: Tensor) -> ClassifierOutput:
        """:param x: ``(B, C, H, W)`` images in [0, 1]. :return: logits ``(B, num_classes)`` and routing."""
        pathway = self._route(x)
        logits = x.new_zeros(x.shape[0], self.num_classes, dtype=torch.float32)
        experts: dict[str, ExpertLogits] = {}
        for name, batch in pathway.experts.items():
            own = self.expert_head(name, batch.features).float()  # (n, C)
            experts[name] = ExpertLogits(batch.sample_index, own, batch.weight)
            logits = logits.index_add(0, batch.sample_index, batch.weight[:, None].float() * own)
        return ClassifierOutput(logits, pathway.features, experts, pathway)

    def forward_features(self, x: Tensor) -> Tensor:
        """:param x: ``(B, C, H, W)`` images. :return: ``(B, m, d)``: slot i holds ``w_i z_i`` (0 if unrouted)."""
        pathway = self._route(x)
        slots = x.new_zeros(x.shape[0], self.num_experts, self.num_features, dtype=torch.float32)
        for column, name in enumerate(self.expert_names):
            batch = pathway.experts.get(name)
            if batch is None:
                continue
            columns = torch.full_like(batch.sample_index, column)
            slots = slots.index_put(
                (batch.sample_index, columns), batch.weight[:, None].float() * batch.features.float()
            )
        return slots

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """:param features: ``(B, m, d)`` from :meth:`forward_features`.
        :return: ``(B, num_classes)`` logits, or ``(B, d)`` aggregated features with ``pre_logits``."""
        if pre_logits:
            return features.sum(dim=1)
        weight = torch.stack([self._head(name).weight for name in self.expert_names])  # (m, C, d)
        return torch.einsum("bmd,mcd->bc", features, weight.to(features.dtype)) + self.head_bias

    # ---------------------------------------------------------------------------------------------- losses

    def losses(self, output: ClassifierOutput, targets: Tensor) -> ClassifierLosses:
        """The training losses of a batch.

        :param output: this model's forward result on the batch.
        :param targets: ``(B,)`` int64 class indices.
        :return: total, task, exploration and exploitation losses (scalars).
        """
        task = F.cross_entropy(output.logits.float(), targets)
        exploit_sum = output.logits.new_zeros(())
        pairs = 0
        for batch in output.experts.values():
            exploit_sum = exploit_sum + F.cross_entropy(batch.logits, targets[batch.sample_index], reduction="sum")
            pairs += int(batch.sample_index.numel())
        exploit = exploit_sum / max(pairs, 1)
        explore = output.explore_loss.float()
        total = task + self.explore_coef * explore + self.exploit_coef * exploit
        return ClassifierLosses(total, task, explore, exploit)

    # --------------------------------------------------------------------------------------------- helpers

    def parameter_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: fine-tuned trunks at ``lr`` times their scale, the rest at ``lr``."""
        scaled = trunk_parameter_groups(self.pathway.experts, self.lr_scales)
        in_trunks = {id(p) for params in scaled.values() for p in params}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_trunks]
        groups: list[dict[str, Any]] = [{"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "pathway"}]
        for scale, params in sorted(scaled.items()):
            if params and scale > 0:
                groups.append(
                    {"params": params, "lr": lr * scale, "weight_decay": weight_decay, "name": f"trunks_x{scale:g}"}
                )
        return groups

    def hub_manifest(self) -> dict[str, Any]:
        """Every expert: source, file digest, architecture, input shape, width, size and training mode."""
        experts = [manifest_entry(name, module) for name, module in self.pathway.experts.items()]
        return {
            "k": self.k,
            "image_shape": list(self.image_shape),
            "experts": experts,
            "spec_origin": self.hub_spec.origin if self.hub_spec is not None else "<modules>",
        }
