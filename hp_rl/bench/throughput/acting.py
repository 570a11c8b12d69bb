"""(c) The acting forward taken apart: where one forward at the rollout batch spends its time."""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from typing import Any

from hp_rl.bench.throughput.extractor import random_frames
from hp_rl.bench.throughput.results import ActingResult, per_call_us
from hp_rl.bench.throughput.training import minatar_hub, ppo_params


def _acting_frames(game: str, args: argparse.Namespace, batch: int) -> tuple[Any, Any]:
    """The observation space and ``(batch, C, H, W)`` float frames as SB3 hands them to the extractor."""
    import torch

    from hp_rl.rl.envs import make_env

    if game == "breakout":
        import numpy as np
        from gymnasium import spaces

        return spaces.Box(0, 255, (4, 84, 84), np.uint8), random_frames(batch, args.device, args.seed)
    env = make_env(args.minatar_game, 1, seed=args.seed)
    space = env.observation_space
    env.close()
    generator = torch.Generator().manual_seed(args.seed)
    shape = tuple(space.shape or ())
    return space, (torch.rand((batch, *shape), generator=generator) < 0.1).float().to(args.device)


def measure_acting(game: str, args: argparse.Namespace, log: Callable[[str], None]) -> list[ActingResult]:
    """CPU time per acting forward of the plain extractor, the hub extractor and the hub's parts."""
    import torch

    from hp_rl.rl.extractor import HubPathwayExtractor

    batch, _ = ppo_params("atari" if game == "breakout" else "minatar", args.quick)
    space, frames = _acting_frames(game, args, batch)
    calls = 5 if args.quick else 200

    def hub(m: int, **kwargs: Any) -> Any:
        torch.manual_seed(args.seed)
        spec: Any = f"random:{m}" if game == "breakout" else minatar_hub(m, int(space.shape[0]), None)
        return HubPathwayExtractor(space, hub=spec, k=min(2, m), **kwargs).to(args.device).eval()

    if game == "breakout":
        from stable_baselines3.common.torch_layers import NatureCNN

        plain: Any = NatureCNN(space).to(args.device).eval()
        label = "plain extractor (NatureCNN)"
    else:
        from hp_rl.rl.baselines import SmallFrameCNN

        plain = SmallFrameCNN(space).to(args.device).eval()
        label = "plain extractor (SmallFrameCNN)"
    main_hub = hub(4)
    expert = next(iter(main_hub.pathway.experts.values()))
    share = frames[: max(batch * 2 // 4, 1)].contiguous()
    extractors: list[tuple[str, Any]] = [
        (label, plain),
        ("hub m=2 k=2 extractor", hub(2)),
        ("hub m=4 k=2 extractor", main_hub),
        ("hub m=4 k=2 extractor, no routing noise", hub(4, noise="none")),
        ("hub m=8 k=2 extractor", hub(8)),
        ("dense mixture m=4 extractor", hub(4, dense=True)),
    ]
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("part: pathway generator (m=4)", lambda: main_hub.pathway.generator(frames)),
        ("part: routing (generator + noisy top-k, m=4)", lambda: main_hub.pathway.route(frames)),
        (f"part: one expert on {len(share)} observations (B*k/m)", lambda: expert(share)),
        (f"part: one expert on {batch} observations", lambda: expert(frames)),
    ]
    results = []
    calls_to_time: list[tuple[str, Callable[[], Any]]] = [
        *[(name, functools.partial(module, frames)) for name, module in extractors],
        *parts,
    ]
    for part, call in calls_to_time:
        cpu_us, wall_us = per_call_us(call, calls, args.reps, args.device)
        module = dict(extractors).get(part)
        experts_run = None
        if isinstance(module, HubPathwayExtractor):
            with torch.no_grad():  # noise differs per call only across rollouts: advance it to sample routes
                counts = []
                for _ in range(20):
                    module.advance_noise()
                    counts.append(float((module.pathway(frames).routes.weights > 0).any(0).sum()))
            experts_run = round(statistics.mean(counts), 2)
        results.append(ActingResult(game, part, batch, cpu_us, wall_us, experts_run))
        log(f"  [{game}] {part:<50} {cpu_us:8.1f} us/call (cpu)")
    return results
