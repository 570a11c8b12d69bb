"""What the throughput benchmark measures and records: its cases and result rows, the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ATARI_GAME = "BreakoutNoFrameskip-v4"
MINATAR_GAME = "MinAtar/Breakout-v1"


@dataclass
class TrainCase:
    """One training-throughput configuration.

    :param name: row label.
    :param experts: m, or 0 for the plain SB3 policy.
    :param k: experts per observation (m for the dense mixture).
    :param frozen: frozen expert trunks.
    :param dense: dense mixture of all experts.
    :param expert_size: MinAtar only: side of the NatureCNN experts' input frames; ``None``: the
        SmallFrameCNN trunk on the 10x10 frames (Atari experts always take the frames as they are).
    :param algo: ``ppo`` (SB3's PPO with the extractor) or ``hubppo`` (HubPPO: the exploitation loss too).
    :param gate_callback: train with :class:`~hp_rl.rl.callbacks.GateUsageCallback` attached.
    :param execution: the extractor's ``execution`` (``auto``, ``fused``, ``sparse``).
    :param user_agents: MinAtar only: agents of the bundled MinAtar hub given as bare SB3 zips to
        ``hp_rl.train``'s command line, the model built as that command builds it (its default configuration:
        ``preset=transfer``, the hub scored, what has evidence routed beside the base network).
    :param hub_set: ``--hub-set`` values for ``user_agents`` rows (``freeze_experts=true``).
    """

    name: str
    experts: int = 0
    k: int = 0
    frozen: bool = True
    dense: bool = False
    expert_size: int | None = None
    algo: str = "ppo"
    gate_callback: bool = False
    execution: str = "auto"
    user_agents: tuple[str, ...] = ()
    hub_set: tuple[str, ...] = ()


@dataclass
class TrainResult:
    """Measured training throughput of one :class:`TrainCase` on one game.

    ``steps_per_s`` divides by wall time; ``steps_per_cpu_s`` by this process's CPU time (all its threads),
    which other processes on a shared machine disturb far less. The ratios compare each with plain PPO's.
    """

    game: str
    case: str
    experts: int
    k: int
    frozen: bool
    dense: bool
    steps: int
    seconds: float
    cpu_seconds: float
    steps_per_s: float
    steps_per_cpu_s: float
    rollout_share: float
    ratio_to_plain: float | None = None
    cpu_ratio_to_plain: float | None = None
    repeats: list[float] = field(default_factory=list)


@dataclass
class ExtractorResult:
    """Measured time and memory of one extractor configuration (``*_cpu_ms``: process CPU time)."""

    mode: str
    routing: str
    experts: int
    k: int
    batch: int
    forward_ms: float
    forward_backward_ms: float
    forward_cpu_ms: float
    forward_backward_cpu_ms: float
    parameters: int
    forward_peak_mib: float | None = None
    forward_backward_peak_mib: float | None = None
    memory_method: str | None = None


@dataclass
class ActingResult:
    """Median time of one call of an acting-path module at the rollout batch (``*_us``: microseconds)."""

    game: str
    part: str
    batch: int
    cpu_us: float
    wall_us: float
    experts_run: float | None = None


# --------------------------------------------------------------------------------------------------------
# Machine


def machine_info(threads: int, device: str) -> dict[str, Any]:
    """CPU model, cores, load, library versions: what the numbers were measured on."""
    import stable_baselines3
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch_threads": threads,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def pin_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # the inter-op pool can be sized only once per process
        torch.set_num_interop_threads(1)


def sync_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def per_call_us(call: Callable[[], Any], calls: int, reps: int, device: str, grad: bool = False) -> tuple[float, float]:
    """Median over ``reps`` of the mean CPU and wall microseconds of ``calls`` calls, without gradient unless
    ``grad``."""
    import torch

    cpu, wall = [], []
    with torch.set_grad_enabled(grad):
        for _ in range(max(calls // 10, 1)):  # warm-up: allocator and oneDNN primitive caches
            call()
        sync_device(device)
        for _ in range(reps):
            began, began_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                call()
            sync_device(device)
            cpu.append((time.process_time() - began_cpu) / calls)
            wall.append((time.perf_counter() - began) / calls)
    return round(1e6 * statistics.median(cpu), 1), round(1e6 * statistics.median(wall), 1)
