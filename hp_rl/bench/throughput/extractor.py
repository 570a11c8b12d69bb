"""(b) The extractor alone: forward and forward+backward time and peak memory at a batch of frames."""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hp_rl.bench.throughput.results import ExtractorResult, pin_threads, sync_device


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


def _median_ms(step: Callable[[], None], reps: int, device: str) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``step`` over ``reps`` runs after one warm-up."""
    step()  # warm-up
    sync_device(device)
    wall, cpu = [], []
    for _ in range(reps):
        began, began_cpu = time.perf_counter(), time.process_time()
        step()
        sync_device(device)
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    return round(1000.0 * statistics.median(wall), 2), round(1000.0 * statistics.median(cpu), 2)


def measure_extractor(args: argparse.Namespace, log: Callable[[str], None]) -> list[ExtractorResult]:
    """Forward and forward+backward time (and peak memory) of every extractor configuration."""
    import torch
    from stable_baselines3.common.torch_layers import NatureCNN

    frames = random_frames(args.batch, args.device, args.seed)
    results = []
    # Reference: SB3's NatureCNN on the same batch.
    import numpy as np
    from gymnasium import spaces

    nature = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8)).to(args.device)
    forward = _median_ms(lambda: _forward(nature, frames), args.reps, args.device)
    both = _median_ms(lambda: _forward_backward(nature, frames), args.reps, args.device)
    reference = ExtractorResult(
        "trained",
        "NatureCNN (plain SB3)",
        0,
        0,
        args.batch,
        forward[0],
        both[0],
        forward[1],
        both[1],
        sum(p.numel() for p in nature.parameters()),
    )
    results.append(reference)
    configs = _extractor_configs(args.ms, args.ks, args.modes)
    for config in configs:
        torch.manual_seed(args.seed)
        extractor = _build_extractor(config, args.device)
        forward = _median_ms(functools.partial(_forward, extractor, frames), args.reps, args.device)
        both = _median_ms(functools.partial(_forward_backward, extractor, frames), args.reps, args.device)
        result = ExtractorResult(
            config["mode"],
            config["routing"],
            config["experts"],
            config["k"],
            args.batch,
            forward[0],
            both[0],
            forward[1],
            both[1],
            sum(p.numel() for p in extractor.parameters()),
        )
        del extractor
        if args.memory:
            peaks = _memory_in_subprocess(config, args)
            result.forward_peak_mib = peaks.get("forward_peak_mib")
            result.forward_backward_peak_mib = peaks.get("forward_backward_peak_mib")
            result.memory_method = peaks.get("method")
        log(
            f"  {config['mode']:<10} {config['routing']:<15} m={config['experts']:<2} k={config['k']:<2} "
            f"fwd {forward[0]:7.1f} ms (cpu {forward[1]:7.1f})  fwd+bwd {both[0]:7.1f} ms (cpu {both[1]:7.1f})  "
            f"peak {result.forward_backward_peak_mib} MiB"
        )
        results.append(result)
    if args.memory:
        peaks = _memory_in_subprocess({"mode": "nature_cnn"}, args)
        reference.forward_peak_mib = peaks.get("forward_peak_mib")
        reference.forward_backward_peak_mib = peaks.get("forward_backward_peak_mib")
        reference.memory_method = peaks.get("method")
    return results


def _memory_in_subprocess(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    probe = {**config, "batch": args.batch, "threads": args.threads, "device": args.device, "seed": args.seed}
    import hp_rl

    # the probe runs this hp_rl (a checkout's, installed or not) in a fresh interpreter
    package_parent = str(Path(hp_rl.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads), PYTHONPATH=path)
    completed = subprocess.run(
        [sys.executable, "-m", "hp_rl.bench.throughput.cli", "--memory-probe", json.dumps(probe)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe {probe} failed:\n{completed.stderr[-2000:]}")
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


def memory_probe(raw: str) -> None:
    """Subprocess entry: peak memory of one configuration, printed as one JSON line."""
    import torch

    probe = json.loads(raw)
    pin_threads(int(probe["threads"]))
    device = probe["device"]
    torch.manual_seed(int(probe["seed"]))
    if probe["mode"] == "nature_cnn":
        import numpy as np
        from gymnasium import spaces
        from stable_baselines3.common.torch_layers import NatureCNN

        module: Any = NatureCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8)).to(device)
    else:
        module = _build_extractor(probe, device)
    frames = random_frames(int(probe["batch"]), device, int(probe["seed"]))
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
