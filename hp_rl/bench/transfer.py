"""Transfer benchmark: Hub-Pathway against scratch, single-expert fine-tuning and a dense mixture.

Leave-one-task-out: for each target task, the hub holds experts pretrained on the *other* tasks of a suite
by the project's hub builder (:func:`hp_rl.rl.pretraining.build_hub`, pretrained once, cached in
``<out>/hubs/<suite>`` and reused by every method and seed). Every method trains PPO for the same number
of environment steps on the target, over several seeds::

    nice -n 10 python benchmarks/transfer.py --suite minatar --targets breakout space_invaders \\
        --seeds 0 1 2 --steps 100000 --out bench_out/transfer
    python benchmarks/transfer.py --report-only --out bench_out/transfer --img-dir docs/img

Methods (``--methods``; PPO everywhere, HubPPO for the hub methods, the family's hyperparameters from
``configs/ppo.yml``; experts are fine-tuned, ``freeze_experts=False``, in every method that uses them):

- ``scratch``: plain PPO, the family's plain network (MinAtar: the small-frame CNN with linear heads;
  control: SB3's ``MlpPolicy``; Atari: NatureCNN).
- ``single``: one run per hub expert, a hub of that expert alone (k=1, no noise, no auxiliary losses): the
  expert's trunk fine-tuned behind its input adapter. The report gives the best expert chosen in
  hindsight (highest mean area under the curve) and the mean over experts.
- ``dense``: all experts on every observation, softmax weights (``dense=True``), no auxiliary losses.
- ``hub_pathway``: top-k routing with learned noise, exploration (load balance) and exploitation losses.
- ``no_noise``, ``no_explore``, ``no_exploit``: Hub-Pathway without one of its three parts.

Each run writes ``<out>/runs/<suite>/<target>/<method>/seed<N>.json`` (episode returns against steps, the
returns of ``--eval-points`` noise-free deterministic evaluations, route shares per rollout, CPU and wall time
of training, forward FLOPs per observation, parameter counts, settings, versions) as soon as it
finishes; finished runs are skipped, so an interrupted sweep continues where it stopped and a partial
sweep still gives tables. ``--report-only`` (and the end of every sweep) writes ``<out>/transfer.md``,
``<out>/transfer_summary.json`` and learning-curve PNGs.

Metrics: the learning curve at step t is the mean return of the last ``CURVE_WINDOW`` training episodes
finished by t (episodes of the behaviour policy, as SB3's ``ep_rew_mean``), on ``CURVE_POINTS`` evenly
spaced steps; *AUC* is the mean of that curve (area under it divided by the steps, in return units);
*final* is the mean return of the episodes that finished in the last 10% of the steps. Intervals are 95%
Student-t intervals over seeds. Compute per step: forward FLOPs per observation of the acting policy
(``torch.utils.flop_counter``, routed experts only) and measured CPU milliseconds per environment step
of the whole training loop (environment stepping included).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from hp_rl.bench.hubs import exported_experts, plan_runs, prepare_hub, source_tasks, target_env_id
from hp_rl.bench.report import write_report
from hp_rl.bench.suites import METHODS, SUITES, Suite, method_uses_sources
from hp_rl.bench.sweep import RunSettings, run_sweep
from hp_rl.bench.types import Expert
from hp_rl.core.runner import Backend, BackendError


def build_parser() -> argparse.ArgumentParser:
    """The command line of the transfer benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="minatar")
    parser.add_argument("--recipe", type=Path, help="use another pretraining recipe for the suite")
    parser.add_argument("--targets", nargs="+", help="target task names (default: the suite's)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument(
        "--single-experts",
        nargs="+",
        metavar="TASK",
        help="fine-tune only these experts in the single-expert runs (default: all)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, help="environment steps per run (default: the suite's)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/transfer"))
    parser.add_argument("--hub-workdir", type=Path, help="hub builder work folder (default: <out>/hubs/<suite>)")
    parser.add_argument("--no-build", action="store_true", help="do not pretrain missing experts")
    parser.add_argument(
        "--experts-from",
        type=Path,
        metavar="HUB_YAML",
        help="read the experts from an exported hub instead of pretraining them "
        "(e.g. hp_rl/hub/bundled/minatar/hub.yaml: the bundled MinAtar hub)",
    )
    parser.add_argument(
        "--accept-checkpoints",
        action="store_true",
        help="use an unfinished expert's newest checkpoint (time-boxed hub builds)",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PPO hyperparameter overrides")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--eval-points",
        type=int,
        default=10,
        help="noise-free deterministic evaluations per run, evenly spaced (0: none)",
    )
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per noise-free evaluation")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel (separate processes; with --ray: the local Ray's CPUs)"
    )
    parser.add_argument("--ray", action="store_true", help="run each run as a task of a local Ray (pip install ray)")
    parser.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (implies --ray), e.g. auto")
    parser.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task asks for (default 0)")
    parser.add_argument("--budget-cpu-minutes", type=float, help="start no new run after this much CPU (jobs=1)")
    parser.add_argument("--report-only", action="store_true", help="only write the report from finished runs")
    parser.add_argument("--img-dir", type=Path, help="where the PNGs go (default: --out)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser


def _source_experts(args: argparse.Namespace, suite: Suite, workdir: Path, uses_sources: bool) -> dict[str, Expert]:
    """The suite's source agents: an exported hub's (``--experts-from``), none where no method uses them, else
    the sweep's own builds (pretrained here unless ``--no-build`` or ``--dry-run``)."""
    if args.experts_from is not None:
        return exported_experts(args.experts_from)
    if not uses_sources:  # scratch and the headline command's own hub: nothing to pretrain
        return {}
    build = not (args.no_build or args.dry_run)
    return dict(prepare_hub(suite, workdir, build=build, accept_checkpoints=args.accept_checkpoints))


def _backend(args: argparse.Namespace) -> Backend:
    """Where the runs go: this process, worker processes, or Ray (checked before any run)."""
    if args.ray or args.ray_address:
        backend = Backend(
            "ray", jobs=args.jobs, address=args.ray_address, cpus_per_job=args.threads, gpus_per_job=args.gpus_per_run
        )
    else:
        backend = Backend("serial" if args.jobs <= 1 else "processes", jobs=args.jobs)
    try:
        backend.check()
    except BackendError as error:
        raise SystemExit(f"error: {error}") from None
    return backend


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep (resumably) and write the report."""
    import torch

    from hp_rl.rl.hyperparams import parse_overrides

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # the hub build too: idle OpenMP threads spin on a busy machine
    out: Path = args.out
    if args.report_only:
        write_report(out, args.img_dir)
        return 0
    suite = SUITES[args.suite]
    if args.recipe is not None:
        suite = replace(suite, recipe=args.recipe.resolve())
    settings = RunSettings(
        steps=args.steps or suite.steps,
        threads=args.threads,
        device=args.device,
        overrides=parse_overrides(args.set),
        out=out,
        eval_points=args.eval_points,
        eval_episodes=args.eval_episodes,
    )
    if args.eval_points < 0 or args.eval_episodes < 1:
        raise SystemExit("error: --eval-points must be >= 0 and --eval-episodes >= 1.")
    targets = tuple(args.targets or suite.targets)
    for target in targets:
        target_env_id(suite, target)  # fail early on a wrong name
    workdir = args.hub_workdir or out / "hubs" / suite.name
    uses_sources = any(method_uses_sources(name) for name in args.methods)
    experts = _source_experts(args, suite, workdir, uses_sources)
    try:
        keys = plan_runs(suite, targets, args.methods, args.seeds, args.single_experts)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.dry_run:
        print(
            json.dumps(
                {
                    "suite": asdict(suite),
                    "settings": asdict(settings),
                    "experts": experts,
                    "runs": [k.method + f"/{k.target}/seed{k.seed}" for k in keys],
                },
                indent=1,
                default=str,
            )
        )
        return 0
    needed = {name for target in targets for name in suite.hubs.get(target, source_tasks(suite)) if name != target}
    missing = sorted(needed - set(experts)) if uses_sources else []
    if missing:  # a target's hub must hold every expert it names
        where = args.experts_from or workdir
        fix = "choose a hub that holds them" if args.experts_from else "run again without --no-build"
        raise SystemExit(f"error: experts {missing} are not in {where}; {fix}.")
    budget = args.budget_cpu_minutes * 60 if args.budget_cpu_minutes else None
    backend = _backend(args)
    run_sweep(suite, keys, settings, experts, out, budget_cpu_seconds=budget, backend=backend)
    write_report(out, args.img_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
