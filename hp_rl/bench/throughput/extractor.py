"""(b) The extractor alone: forward and forward+backward time and peak memory at a batch of frames."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hp_rl.bench.throughput.results import ExtractorResult, per_call_us, pin_threads


def _extractor_configs(ms: Sequence[int], ks: Sequence[int], modes: Sequence[str]) -> list[dict[str, Any]]:
    configs = []
    for mode in modes:
        for m in ms:
            for k in ks:
                if k <= m:
                    configs.append({"mode": mode, "routing": "sparse", "experts": m, "k": k})
            if m >= 2:
                configs.append({"mode": mode, "routing": "dense-dispatch", "experts": m, "k": 2})
            configs.append({"mode": mode, "routing": "dense-mixture", "experts": m, "k": m})
    return configs


def _build_extractor(config: dict[str, Any], device: str) -> Any:
    import numpy as np
    from gymnasium import spaces

    from hp_rl.rl.extractor import HubPathwayExtractor

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    extractor = HubPathwayExtractor(
        space,
        hub=f"random:{config['experts']}",
        k=config["k"],
        freeze_experts=config["mode"] == "frozen",
        dense=config["routing"] == "dense-mixture",
    )
    if config["routing"] == "dense-dispatch":
        extractor.pathway.sparse = False
    return extractor.to(device)


def random_frames(batch: int, device: str, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # What SB3 hands the extractor: uint8 frames scaled to [0, 1].
    return (torch.randint(0, 256, (batch, 4, 84, 84), generator=generator).float() / 255.0).to(device)


def _forward(extractor: Any, frames: Any) -> None:
    import torch

    extractor.eval()
    with torch.no_grad():
        extractor(frames)


def _forward_backward(extractor: Any, frames: Any) -> None:
    extractor.train()
    extractor(frames).sum().backward()


def measure_extractor(args: argparse.Namespace, log: Callable[[str], None]) -> list[ExtractorResult]:
    """Forward and forward+backward time (and peak memory) of every extractor configuration, each measured in a
    fresh interpreter.

    In one process the configurations measured late ran slower than alone (the 16-expert extractors about 1.2x
    their time in a process of their own, measured): what one process allocated before changes what the next
    configuration costs, and a user's process holds one extractor.
    """
    configs: list[dict[str, Any]] = [{"mode": "nature_cnn"}, *_extractor_configs(args.ms, args.ks, args.modes)]
    results = []
    for config in configs:
        times = _in_subprocess(config, args, "time")
        forward, both = times["forward"], times["forward_backward"]
        reference = config["mode"] == "nature_cnn"
        result = ExtractorResult(
            "trained" if reference else config["mode"],
            "NatureCNN (plain SB3)" if reference else config["routing"],
            0 if reference else config["experts"],
            0 if reference else config["k"],
            args.batch,
            forward[0],
            both[0],
            forward[1],
            both[1],
            int(times["parameters"]),
        )
        if args.memory:
            peaks = _in_subprocess(config, args, "memory")
            result.forward_peak_mib = peaks.get("forward_peak_mib")
            result.forward_backward_peak_mib = peaks.get("forward_backward_peak_mib")
            result.memory_method = peaks.get("method")
        if not reference:
            log(
                f"  {config['mode']:<10} {config['routing']:<15} m={config['experts']:<2} k={config['k']:<2} "
                f"fwd {forward[0]:7.1f} ms (cpu {forward[1]:7.1f})  fwd+bwd {both[0]:7.1f} ms (cpu {both[1]:7.1f})  "
                f"peak {result.forward_backward_peak_mib} MiB"
            )
        results.append(result)
    return results


def _in_subprocess(config: dict[str, Any], args: argparse.Namespace, measure: str) -> dict[str, Any]:
    """:func:`probe` of one configuration in a fresh interpreter: its ``"time"`` or peak ``"memory"``."""
    probe = {**config, "batch": args.batch, "threads": args.threads, "device": args.device, "seed": args.seed}
    probe.update(measure=measure, reps=args.reps)
    import hp_rl

    # the probe runs this hp_rl (a checkout's, installed or not) in a fresh interpreter
    package_parent = str(Path(hp_rl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=path)
    if measure == "memory":  # every large allocation its own mapping, so that the peak shows in VmHWM
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    completed = subprocess.run(
        [sys.executable, "-m", "hp_rl.bench.throughput.cli", "--probe", json.dumps(probe)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{measure} probe {probe} failed:\n{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_mib(step: Callable[[], None], device: str) -> tuple[float, str]:
    """Memory added at the peak of ``step`` (after a warm-up run of it), and the method used."""
    step()  # warm-up: gradients, one-time caches
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        allocated = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - allocated) / 2**20, "torch.cuda.max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _proc_status_kib("VmRSS")
        step()
        peak = _proc_status_kib("VmHWM")
        if before is not None and peak is not None:
            return (peak - before) / 1024, "VmHWM - VmRSS (clear_refs reset), MALLOC_MMAP_THRESHOLD_=65536"
    except OSError:
        pass
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max_rss
    ) / 1024, "getrusage ru_maxrss delta (lower bound)"


def probe(raw: str) -> None:
    """Subprocess entry: the times (``"measure": "time"``) or peak memory of one configuration, as one JSON line."""
    import torch

    settings = json.loads(raw)
    pin_threads(int(settings["threads"]))
    device = settings["device"]
    torch.manual_seed(int(settings["seed"]))
    if settings["mode"] == "nature_cnn":
        import numpy as np
        from gymnasium import spaces
        from stable_baselines3.common.torch_layers import NatureCNN

        module: Any = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8)).to(device)
    else:
        module = _build_extractor(settings, device)
    frames = random_frames(int(settings["batch"]), device, int(settings["seed"]))
    if settings["measure"] == "time":
        reps = int(settings["reps"])
        times = {
            "forward": per_call_us(lambda: _forward(module, frames), 1, reps, device),
            "forward_backward": per_call_us(lambda: _forward_backward(module, frames), 1, reps, device, grad=True),
        }
        # (wall, CPU) milliseconds, as the other rows of the report
        milliseconds = {name: (round(wall / 1000, 2), round(cpu / 1000, 2)) for name, (cpu, wall) in times.items()}
        print(json.dumps({**milliseconds, "parameters": sum(p.numel() for p in module.parameters())}))
        return
    forward_peak, method = _peak_mib(lambda: _forward(module, frames), device)
    both_peak, _ = _peak_mib(lambda: _forward_backward(module, frames), device)
    print(
        json.dumps(
            {
                "forward_peak_mib": round(forward_peak, 1),
                "forward_backward_peak_mib": round(both_peak, 1),
                "method": method,
            }
        )
    )
