"""The routing core of Hub-Pathway, in plain PyTorch (no RL or vision dependencies)."""

from hp_rl.routing.build import GateConfig, add_starting_preference, build_pathway
from hp_rl.routing.experts import ActorCriticTrunk, AdaptedExpert, HeadedExpert, OutputMix, TrunkExpert, readout_logits
from hp_rl.routing.fused import FUSED_MAX_FLOPS, Execution, FusedGroup, register_lowering
from hp_rl.routing.gate import Gate, NoiseSource
from hp_rl.routing.generator import GeneratorLogits, PathwayGenerator, conv_body, mlp_body
from hp_rl.routing.init import KeepInit
from hp_rl.routing.losses import attach_loss, balance_loss, cv_squared, smooth_load, switch_balance_loss
from hp_rl.routing.noise import content_keyed_normal
from hp_rl.routing.pathway import ExpertBatch, HubPathway, PathwayOutput
from hp_rl.routing.picture import coactivation_picture
from hp_rl.routing.router import BalanceMode, NoiseMode, NoisyTopKRouter, Routes
from hp_rl.routing.schedule import PathwaySchedule, linear_decay
from hp_rl.routing.stats import GateStatistics, GateSummary

__all__ = [
    "AdaptedExpert",
    "BalanceMode",
    "Execution",
    "ExpertBatch",
    "FUSED_MAX_FLOPS",
    "FusedGroup",
    "Gate",
    "GateConfig",
    "GateStatistics",
    "HeadedExpert",
    "ActorCriticTrunk",
    "OutputMix",
    "GateSummary",
    "GeneratorLogits",
    "HubPathway",
    "KeepInit",
    "NoiseMode",
    "NoiseSource",
    "NoisyTopKRouter",
    "PathwayGenerator",
    "PathwaySchedule",
    "PathwayOutput",
    "Routes",
    "TrunkExpert",
    "add_starting_preference",
    "attach_loss",
    "balance_loss",
    "build_pathway",
    "content_keyed_normal",
    "coactivation_picture",
    "conv_body",
    "cv_squared",
    "linear_decay",
    "mlp_body",
    "readout_logits",
    "register_lowering",
    "smooth_load",
    "switch_balance_loss",
]
