"""``python -m hp_rl.distill RUN``: a one-network student of a trained hub agent, as a plain SB3 zip.

    python -m hp_rl.distill runs/ppo_MinAtar-Breakout-v1_minatar-k2_1 --steps 50000
    python -c "from stable_baselines3 import PPO; PPO.load('runs/.../student.zip')"   # no hp_rl needed

The student is the network a plain run trains (``--hub none``), taught by DAgger to act as the hub agent does
(:mod:`hp_rl.rl.distill`). Both are then evaluated on the same seeded episodes, deterministic actions, as
``python -m hp_rl.evaluate`` plays them. Written to the run folder: ``student.zip`` (loadable by plain
``PPO.load``/``A2C.load``; hp_rl's small-frame network is stored in it by value) and ``distill.yml`` (settings,
per-round KL, returns of both, acting speed, the distillation's cost in steps beside the teacher's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import HpRlError, error_message
from hp_rl.evaluate import CliError, choose_checkpoint

__all__ = ["build_parser", "distill_run", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hp_rl.distill``."""
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.distill"),
        description="Distil a trained hub agent into the plain network of its task (a standard SB3 zip).",
    )
    parser.add_argument("run", help="run folder of a hub agent (PPO or A2C)")
    parser.add_argument("--steps", type=float, default=50_000, help="environment steps of the student (default 5e4)")
    parser.add_argument("--rounds", type=int, default=10, help="DAgger rounds (default 10)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the gathered data per round (default 4)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes of each agent (default 10)")
    parser.add_argument("--checkpoint", help="teacher: best, final (default), latest or a checkpoint .zip")
    parser.add_argument("--out", help="the student's zip (default RUN/student.zip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the student and its rollouts (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: the run's)")
    return parser


def _checked_run(args: argparse.Namespace) -> tuple[int, Any, Any]:
    """The distillation steps, the run folder and its config, after checking that the run is a hub agent of PPO or
    A2C and that the numbers are usable; the run's device and threads applied."""
    from hp_rl.rl.models import apply_threads, check_device
    from hp_rl.rl.runs import AgentRunFolder, RunConfig

    steps = int(args.steps) if args.steps == args.steps and abs(args.steps) < 1e12 else 0
    if steps < 1 or args.rounds < 1 or args.epochs < 1 or args.episodes < 1:
        raise CliError("--steps, --rounds, --epochs and --episodes must each be at least 1.")
    folder = AgentRunFolder(Path(args.run))
    if not folder.config.is_file():
        raise CliError(f"{args.run}: {folder.config} does not exist; give a run folder made by python -m hp_rl.train.")
    folder.refuse_links()
    config = RunConfig.from_yaml(folder.config)
    if config.hub is None:
        raise CliError(f"{args.run} trained without a hub: it is one network already (its model.zip loads in SB3).")
    if config.algo not in ("ppo", "a2c"):
        raise CliError(
            f"{args.run} is a {config.algo} run; distillation takes PPO and A2C agents (a policy to imitate)."
        )
    config.device = check_device(args.device or config.device, "--device")
    apply_threads(config.threads, config.device)
    return steps, folder, config


def distill_run(args: argparse.Namespace, report: Any = print) -> dict[str, Any]:
    """Distil the run folder ``args.run``; returns what ``distill.yml`` records.

    :raises CliError: a folder that is not a hub run of PPO or A2C, or bad numbers, naming the fix.
    """
    from hp_rl.core.paths import write_text_by_rename
    from hp_rl.rl.checkpoints import load_model
    from hp_rl.rl.distill import DistillSettings, distill_policy, evaluate_both, save_standalone
    from hp_rl.rl.envs import make_env
    from hp_rl.rl.models import build_model
    from hp_rl.rl.runs import RunConfig

    steps, folder, config = _checked_run(args)
    teacher_path = choose_checkpoint(folder, args.checkpoint)

    def environments(n_envs: int, seed: int, evaluation: bool = False) -> Any:
        return make_env(
            config.env_id, n_envs, seed, config.env_preset, evaluation=evaluation, env_kwargs=config.env_kwargs
        )

    env = environments(config.n_envs, config.seed + 30_000 + args.seed)
    try:
        teacher = load_model(config, teacher_path, env, folder)
        student_config = RunConfig.for_task(
            config.algo, config.env_id, env_preset=config.env_preset, env_kwargs=config.env_kwargs, n_timesteps=0,
            n_envs=config.n_envs, seed=args.seed, device=config.device,
        )  # fmt: skip
        student = build_model(student_config, env)
        settings = DistillSettings(steps=steps, rounds=args.rounds, epochs=args.epochs, seed=args.seed)
        report(f"Distilling {teacher_path} into {type(student.policy).__name__} ({steps} steps, {args.rounds} rounds)")
        result = distill_policy(
            teacher,
            student,
            env,
            settings,
            report=lambda r: report(
                f"  round {int(r['round'])}: {int(r['steps'])} steps, teacher acts {r['teacher_share']:.0%}, "
                f"KL(teacher || student) {r['kl_before']:.4f}"
            ),
        )
    finally:
        env.close()
    seed = config.seed + 20_000  # the episodes python -m hp_rl.evaluate plays
    played = evaluate_both(teacher, student, lambda: environments(1, seed, evaluation=True), args.episodes)
    out = Path(args.out) if args.out else folder.path / "student.zip"
    save_standalone(student, out)
    record = {
        "teacher": str(teacher_path),
        "teacher_steps": int(teacher.num_timesteps),
        "student": str(out),
        "student_parameters": sum(p.numel() for p in student.policy.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.policy.parameters()),
        "settings": vars(settings),
        "distill_steps": result.steps,
        "distill_share_of_teacher_steps": round(result.steps / max(teacher.num_timesteps, 1), 4),
        "seconds": result.seconds,
        "rounds": result.history,
        "evaluation": {"episodes": args.episodes, "seed": seed, **played},
        "student_return_share": round(played["student"]["mean"] / played["teacher"]["mean"], 4)
        if played["teacher"]["mean"]
        else None,
    }
    write_text_by_rename(folder.path / "distill.yml", yaml.safe_dump(record, sort_keys=False))
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hp_rl.distill``; returns the exit status."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        record = distill_run(args)
    except HpRlError as error:  # the user's to fix; anything else is a bug and keeps its traceback
        print(error_message(error), file=sys.stderr)
        return 2
    teacher, student = record["evaluation"]["teacher"], record["evaluation"]["student"]
    print(
        f"Student {record['student']}: return {student['mean']:.2f} ± {student['std']:.2f} against the hub agent's "
        f"{teacher['mean']:.2f} ± {teacher['std']:.2f} ({record['evaluation']['episodes']} episodes); "
        f"{student['steps_per_second']:.0f} against {teacher['steps_per_second']:.0f} steps/s acting; "
        f"{record['distill_steps']} steps of distillation ({record['distill_share_of_teacher_steps']:.1%} of the "
        f"teacher's {record['teacher_steps']}). Written to {Path(args.run) / 'distill.yml'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
