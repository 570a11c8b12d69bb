"""Does ``torch.compile`` pay for a hub's acting forward and its update on a CPU? One measurement, in one process.

The pathway of a MinAtar hub (4 random small-frame experts, k=2): the generator, the content-keyed noise (its torch
form, which the compiler can trace), the noisy top-k router, the fused call of the experts and the weighted
combination, as one function, eager and compiled by inductor (``dynamic=False``: one graph per batch size). Timed
on the acting batch (8 rows, no gradient) and on an update minibatch (256 rows, forward and backward, frozen and
fine-tuned experts), with outputs, routes and gradients compared. Then the parts that stay external kernels in the
compiled graph (the convolutions and batched products), timed alone: the floor of what compiling can reach.

It reaches into the fused groups' weight stacking to trace it: a measurement, not a path ``hp_rl.train`` takes.

    hp-rl bench compile_probe --out bench_out/compile_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hp_rl.bench.throughput.results import per_call_us
from hp_rl.bench.throughput.training import minatar_hub

# the pathway as one function of the frames: (B, ...) -> ((B, d) output, (B, m) weights)
PathwayFunction = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _cpu_us(call: Callable[[], Any], calls: int, grad: bool = False) -> float:
    """CPU microseconds per call (:func:`~hp_rl.bench.throughput.results.per_call_us`, 5 repetitions, on the CPU)."""
    return per_call_us(call, calls, reps=5, device="cpu", grad=grad)[0]


def _pathway_function(extractor: Any, frames: torch.Tensor) -> PathwayFunction:
    """The pathway's forward as one traceable function of the frames (its noise seed and epoch fixed).

    Frozen experts' stacked weights are read as constants (no cache checks to trace); trainable ones are stacked
    inside the graph, so their gradients flow through it.
    """
    from hp_rl.routing import noise as keyed
    from hp_rl.routing.fused import _attribute

    pathway = extractor.pathway
    groups = pathway.fused_groups(frames)
    for group in groups:
        with torch.no_grad():
            group(frames)
        cache = {key: value for key, (_, value) in group._cache.items()}

        def stacked(step: int, path: str, build: Any, group: Any = group, cache: Any = cache) -> Any:
            params = [_attribute(ops[step].module, path) for ops in group.ops]
            if params[0] is None or not params[0].requires_grad:
                return cache.get((step, path))
            return build(params)

        group._stacked = stacked
    seed, epoch = (int(v) for v in pathway.noise.state.tolist())
    m = len(pathway.experts)
    weights = keyed._position_weights(frames[0].numel(), keyed._wrap64(seed), "cpu")
    seed_term = torch.tensor(keyed._wrap64(seed))
    epoch_term = torch.tensor(keyed._wrap64(epoch * keyed._MIX_1))
    counters = torch.tensor([keyed._wrap64((i + 1) * keyed._GOLDEN) for i in range(2 * m)])

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = pathway.generator(x)
        flat = x.reshape(x.shape[0], -1).float().contiguous().view(torch.int32)
        hashed = keyed._mix((flat * weights).sum(dim=1, dtype=torch.int32).long() + seed_term)
        bits = (keyed._mix((hashed + epoch_term)[:, None] + counters[None, :]) & keyed._MASK_24).float()
        uniform = (bits + 0.5) / float(1 << 24)
        normal = torch.sqrt(-2.0 * torch.log(uniform[:, :m])) * torch.cos(2.0 * torch.pi * uniform[:, m:])
        routes = pathway.router(logits.clean, logits.noise, normal)
        out = None
        for group in groups:
            part = (routes.weights[:, group.columns].t().unsqueeze(-1) * group(x)).sum(0)
            out = part if out is None else out + part
        assert out is not None
        return out, routes.weights

    return forward


def _hub(space: Any, frozen: bool) -> Any:
    from hp_rl.rl.extractor import HubPathwayExtractor

    torch.manual_seed(0)
    hub = minatar_hub(4, int(space.shape[0]), None)
    return HubPathwayExtractor(space, hub=hub, k=2, freeze_experts=frozen)


def _gradients(extractor: Any, function: PathwayFunction, frames: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in extractor.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    function(frames)[0].sum().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


def _update(space: Any, frozen: bool, calls: int) -> dict[str, Any]:
    """Forward and backward of an update minibatch (256 rows), eager and compiled."""
    frames = (torch.rand((256, *space.shape), generator=torch.Generator().manual_seed(1)) < 0.1).float()
    extractor = _hub(space, frozen).train()
    function = _pathway_function(extractor, frames)
    began = time.perf_counter()
    compiled = torch.compile(function, dynamic=False)
    compiled_grads = _gradients(extractor, compiled, frames)
    compile_s = time.perf_counter() - began
    eager_grads = _gradients(extractor, function, frames)
    kind = "frozen" if frozen else "fine-tuned"
    return {
        f"update {kind}: hub extractor as hp_rl runs it": _cpu_us(
            lambda: extractor(frames).sum().backward(), calls, grad=True
        ),
        f"update {kind}: path eager (every expert on every row)": _cpu_us(
            lambda: function(frames)[0].sum().backward(), calls, grad=True
        ),
        f"update {kind}: path compiled": _cpu_us(lambda: compiled(frames)[0].sum().backward(), calls, grad=True),
        f"update {kind}: compile seconds": round(compile_s, 1),
        # relative to each parameter's largest eager gradient: sums over 256 rows differ in their last bits
        f"update {kind}: max gradient difference, relative": max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(compiled_grads, eager_grads)
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    """The probe's command line."""
    parser = argparse.ArgumentParser(prog="hp-rl bench compile_probe", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--calls", type=int, default=300, help="acting calls per repetition (updates: a tenth)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Measure, print, and write the JSON where ``--out`` says."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    # compile seconds as a run pays them the first time: no graphs reused from an earlier run's cache
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    from hp_rl.rl.baselines import SmallFrameCNN
    from hp_rl.rl.envs import make_env

    env = make_env(args.env, 1, seed=0)
    space = env.observation_space
    env.close()
    assert space.shape is not None
    frames = (torch.rand((8, *space.shape), generator=torch.Generator().manual_seed(0)) < 0.1).float()
    extractor = _hub(space, True).eval()
    acting = _pathway_function(extractor, frames)
    with torch.no_grad():
        eager_out, eager_weights = acting(frames)
        reference = extractor.pathway(frames)
        began = time.perf_counter()
        compiled = torch.compile(acting, dynamic=False)
        compiled_out, compiled_weights = compiled(frames)
    compile_s = time.perf_counter() - began
    group = extractor.pathway.fused_groups(frames)[0]
    generator_conv = next(m for m in extractor.pathway.generator.modules() if isinstance(m, torch.nn.Conv2d))
    plain = SmallFrameCNN(space)
    batch = (torch.rand((256, *space.shape), generator=torch.Generator().manual_seed(1)) < 0.1).float()
    calls = args.calls
    result = {
        "plain extractor (SmallFrameCNN)": _cpu_us(lambda: plain(frames), calls),
        "hub extractor, eager (as hp_rl runs it)": _cpu_us(lambda: extractor(frames), calls),
        "acting path, eager": _cpu_us(lambda: acting(frames), calls),
        "acting path, compiled": _cpu_us(lambda: compiled(frames), calls),
        "compile seconds": round(compile_s, 1),
        "same routes as the pathway": bool(torch.equal(eager_weights, reference.routes.weights)),
        "compiled max abs difference": float((compiled_out - eager_out).abs().max()),
        "compiled same routes": bool(torch.equal(compiled_weights > 0, eager_weights > 0)),
        "part: fused experts (every expert, every row)": _cpu_us(lambda: group(frames), calls),
        "part: generator convolution": _cpu_us(lambda: generator_conv(frames), calls),
        "update: plain extractor (SmallFrameCNN)": _cpu_us(
            lambda: plain(batch).sum().backward(), calls // 10, grad=True
        ),
        **_update(space, True, calls // 10),
        **_update(space, False, calls // 10),
    }
    for key, value in result.items():
        print(f"{key:<58} {value}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "env": args.env, **result}, indent=2) + "\n")
    return 0
