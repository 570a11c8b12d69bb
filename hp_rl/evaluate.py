"""``python -m hp_rl.evaluate RUN``: evaluate a trained run and optionally record a video of one episode.

Examples::

    python -m hp_rl.evaluate runs/ppo_CartPole-v1_random4-k1_1 --episodes 20
    python -m hp_rl.evaluate runs/ppo_BreakoutNoFrameskip-v4_atari-k2_1 --checkpoint best --video breakout.mp4

The model is built from the run's ``config.yml`` (algorithm, environment, preset) and evaluated on the
preset's evaluation environment (Atari: whole games with the true score) with routing noise off. The
result is printed and appended to ``RUN/evaluation.yml``.

Exit codes: 0 done; 2 a usage or input error (the message names the problem and the fix).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.core.console import configure_logging, program_name
from hp_rl.core.errors import CliError, HpRlError, error_message
from hp_rl.core.paths import append_text_by_rename

__all__ = ["CliError", "VIDEO_FORMATS", "build_parser", "main", "evaluate_run", "choose_checkpoint", "record_video"]

VIDEO_FORMATS = (".mp4", ".avi", ".gif")
_GIF_MAX_FRAMES = 3000  # a gif keeps every frame in memory; mp4/avi stream to disk
_MAX_FRAMES = 30_000


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hp_rl.evaluate``."""
    parser = argparse.ArgumentParser(
        prog=program_name("hp_rl.evaluate"),
        description="Evaluate the model of a run folder made by python -m hp_rl.train.",
    )
    parser.add_argument("run", metavar="RUN", help="the run folder (for example runs/ppo_CartPole-v1_nohub_1)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default: 10)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--deterministic", dest="deterministic", action="store_true", default=True, help="greedy actions (default)"
    )
    mode.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
    parser.add_argument(
        "--video", metavar="PATH", help="record one episode to PATH (.mp4 or .avi with opencv, .gif with pillow)"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="{best,final,latest,FILE}",
        help="which model: final (model.zip), best (eval/best_model.zip, needs --eval-freq during "
        "training), latest (newest checkpoint), or a checkpoint FILE of the same configuration "
        "(only its weights and step counters are read). Default: final, else latest",
    )
    parser.add_argument("--seed", type=int, help="seed of the evaluation environment (default: the run's seed + 20000)")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="Atari: end an episode after N emulator frames (default: 108000, i.e. 27000 agent steps)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--routes",
        metavar="PNG",
        help="hub runs: also draw the routes of one episode (observations per expert, weights along it)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: tracebacks with error messages")
    return parser


def choose_checkpoint(folder: Any, which: str | None) -> Path:
    """The model file of a run folder for ``--checkpoint`` (``None``: final, else the latest checkpoint).

    :param folder: a :class:`~hp_rl.rl.runs.AgentRunFolder`.
    :param which: ``best``, ``final``, ``latest``, a file path, or ``None``.
    :raises CliError: when the asked-for file is not there.
    """
    if which not in (None, "best", "final", "latest"):
        path = Path(str(which)).expanduser()
        if not path.is_file():
            raise CliError(f"--checkpoint {which}: no such file; give best, final, latest or a checkpoint .zip.")
        if folder.path.resolve() not in path.resolve().parents:
            print(
                f"note: {path} is read as a checkpoint of {folder.config}: its weights (policy.pth, weights only) "
                "and plain step counters; nothing pickled in it (policy class, spaces, schedules in 'data') is "
                "decoded, the run's config.yml builds the model.",
                file=sys.stderr,
            )
        return path
    if which == "best":
        if not folder.best_model.is_file():
            raise CliError(
                f"{folder.best_model} does not exist: no evaluation ran during training (it runs every "
                "--eval-freq steps). Use --checkpoint final or --checkpoint latest."
            )
        return Path(folder.best_model)
    if which in (None, "final") and folder.final_model.is_file():
        return Path(folder.final_model)
    found = folder.latest_checkpoint()
    if which == "final":
        hint = " Use --checkpoint latest, or finish it with python -m hp_rl.train --resume RUN." if found else ""
        raise CliError(f"{folder.final_model} does not exist: the run has not finished.{hint}")
    if found is None:
        raise CliError(
            f"{folder.path} holds no model: neither model.zip nor a checkpoint in {folder.checkpoints}. "
            "Train it (python -m hp_rl.train) or resume it (--resume) first."
        )
    if which is None:
        print(
            f"note: no model.zip (the run has not finished); evaluating the latest checkpoint {found[0].name}.",
            file=sys.stderr,
        )
    return found[0]


class _FrameWriter:
    """Streams RGB frames to an .mp4/.avi file (opencv) or collects them for a .gif (pillow).

    :param path: output file; its suffix picks the format.
    :param fps: frames per second.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.suffix = path.suffix.lower()
        if self.suffix not in VIDEO_FORMATS:
            formats = ", ".join(VIDEO_FORMATS)
            raise CliError(f"--video {path}: unknown video format {path.suffix!r}; use one of {formats}.")
        self.frames: list[np.ndarray] = []
        self.writer: Any = None
        self.count = 0
        try:
            if self.suffix == ".gif":
                import PIL.Image  # noqa: F401
            else:
                import cv2  # noqa: F401
        except ImportError as error:
            package = "pillow" if self.suffix == ".gif" else "opencv-python-headless"
            raise CliError(
                f"--video {path}: writing {self.suffix} files needs {package}, which is not installed: "
                f"pip install {package} (or choose another of {', '.join(VIDEO_FORMATS)})."
            ) from error

    def write(self, frame: np.ndarray) -> None:
        """Add one ``(H, W, 3)`` uint8 RGB frame."""
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if frame.ndim == 2:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        self.count += 1
        if self.suffix == ".gif":
            if len(self.frames) < _GIF_MAX_FRAMES:
                self.frames.append(frame)
            return
        import cv2

        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.suffix == ".mp4" else "MJPG"))  # type: ignore[attr-defined]
            height, width = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (width, height))
            if not self.writer.isOpened():
                raise CliError(f"--video {self.path}: opencv cannot write {self.suffix} files here; try .avi or .gif.")
        self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        """Finish the file."""
        if self.suffix == ".gif" and self.frames:
            from PIL import Image

            images = [Image.fromarray(frame) for frame in self.frames]
            images[0].save(self.path, save_all=True, append_images=images[1:], duration=int(1000 / self.fps), loop=0)
        elif self.writer is not None:
            self.writer.release()


def record_video(model: Any, config: Any, path: Path, seed: int, deterministic: bool) -> tuple[int, float]:
    """Play one episode on a rendering copy of the evaluation environment and write it to ``path``.

    :param model: the SB3 model.
    :param config: the run's :class:`~hp_rl.rl.runs.RunConfig`.
    :param path: ``.mp4``, ``.avi`` or ``.gif`` file.
    :param seed: environment seed.
    :param deterministic: greedy actions.
    :return: frames written and the episode's return.
    """
    from hp_rl.rl.envs import make_env, preset_for

    writer = _FrameWriter(path, fps=30.0)
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off screen; no window, no display warning
    env = make_env(
        config.env_id,
        1,
        seed,
        config.env_preset,
        evaluation=True,
        env_kwargs={**config.env_kwargs, "render_mode": "rgb_array"},
    )
    fps = env.get_attr("metadata")[0].get("render_fps")
    writer.fps = float(fps) if isinstance(fps, int | float) and fps > 0 else 30.0
    if preset_for(config.env_id, config.env_preset).wrapper == "atari":
        # one frame per agent step: the Atari 2600 draws 60 frames a second and the wrapper skips 4 of them (ALE's
        # render_fps metadata says 30, which would play the game at half speed)
        writer.fps = 60.0 / 4
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # gymnasium's checks of an environment's rendering speak to its authors (MinAtar declares no fps and draws
        # float frames); the writer converts frames itself
        warnings.filterwarnings("ignore", message=".*(render fps|RGB-array rendering).*", category=UserWarning)
        return _play_and_write(model, env, writer, deterministic)


def _play_and_write(model: Any, env: Any, writer: _FrameWriter, deterministic: bool) -> tuple[int, float]:
    from hp_rl.rl.pathway_control import routing_noise

    total = 0.0
    try:
        observation = env.reset()
        writer.write(env.render())
        with routing_noise(model, enabled=False):
            for _ in range(_MAX_FRAMES):
                action, _ = model.predict(observation, deterministic=deterministic)
                observation, reward, done, infos = env.step(action)
                total += float(reward[0])
                if done[0]:  # the vector env has already reset: this frame would be the next episode's first
                    episode: dict[str, Any] | None = infos[0].get("episode")
                    if episode is not None:
                        total = float(episode["r"])
                    break
                writer.write(env.render())
    finally:
        writer.close()
        env.close()
    return writer.count, total


class _EpisodeBar:
    """A tqdm bar of finished episodes, showing the steps of the running one (``evaluate_policy`` callback)."""

    def __init__(self, episodes: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=episodes, unit="episode", disable=not enabled, dynamic_ncols=True)
        self.steps = 0

    def update(self, local: dict[str, Any], _: dict[str, Any]) -> None:
        self.steps += 1
        if local.get("done"):
            info = local.get("info") or {}
            if "episode" in info:  # the monitor's episode end (a lost life is not one)
                self.bar.update(1)
                self.steps = 0
        if self.steps and self.steps % 100 == 0:  # the running episode's steps (none between episodes)
            self.bar.set_postfix(steps=self.steps, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _which_episode(replayed: bool) -> str:
    """What a video or route picture shows: the evaluation's first episode played again (the same seed and greedy
    actions give the same episode), or, with stochastic actions, an episode of its own."""
    return "episode 1 of the evaluation" if replayed else "an episode of its own (stochastic actions)"


def evaluate_run(
    run: str | Path,
    episodes: int = 10,
    deterministic: bool = True,
    checkpoint: str | None = None,
    seed: int | None = None,
    device: str = "auto",
    video: str | Path | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    routes: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the model of a run folder and append the result to its ``evaluation.yml``.

    :param run: the run folder.
    :param episodes: evaluation episodes.
    :param deterministic: greedy actions (routing noise is always off).
    :param checkpoint: ``best``, ``final``, ``latest`` or ``None`` (final, else latest).
    :param seed: evaluation environment seed (``None``: the run's seed + 20000, apart from training's
        evaluation episodes, which pick the best model).
    :param device: torch device.
    :param video: also record one episode to this file.
    :param max_frames: Atari episode cap in emulator frames (``None``: the preset's 108,000).
    :param progress: show a progress bar of episodes (and steps of the current one).
    :param routes: also write a route picture of one episode to this PNG (:mod:`hp_rl.rl.route_picture`).
    :return: the result written to ``evaluation.yml``.
    :raises CliError: for a folder, checkpoint or video path that does not work, naming the fix.
    """
    import yaml

    folder, config = _checked_run(run, episodes, device, max_frames, video, routes)
    path = choose_checkpoint(folder, checkpoint)
    seed = config.seed + 20_000 if seed is None else seed
    model, env = _load_for_evaluation(config, folder, path, seed)
    played = _play_episodes(model, env, episodes, deterministic, progress)
    result: dict[str, Any] = {"checkpoint": str(path), "num_timesteps": int(model.num_timesteps)}
    result.update(episodes=episodes, deterministic=deterministic, seed=seed, **played)
    if routes is not None:
        from hp_rl.rl.envs import make_env
        from hp_rl.rl.route_picture import draw_routes, record_routes

        routes_env = make_env(config.env_id, 1, seed, config.env_preset, evaluation=True, env_kwargs=config.env_kwargs)
        try:
            episode = record_routes(model, routes_env)
        finally:
            routes_env.close()
        steps_drawn = len(episode.weights)
        result["routes"] = {
            "path": str(draw_routes(episode, Path(routes))),
            "steps": steps_drawn,
            "episode": _which_episode(deterministic and steps_drawn == result["lengths"][0]),
        }
    if video is not None:
        frames, video_return = record_video(model, config, Path(video), seed, deterministic)
        same = deterministic and frames == result["lengths"][0] and abs(video_return - result["returns"][0]) < 1e-6
        result["video"] = {"path": str(video), "frames": frames, "return": video_return}
        result["video"]["episode"] = _which_episode(same)
    append_text_by_rename(folder.evaluation, yaml.safe_dump([result], sort_keys=False))
    return result


def _checked_run(
    run: str | Path, episodes: int, device: str, max_frames: int | None, video: str | Path | None, routes: Any
) -> tuple[Any, Any]:
    """The run folder and its config, after checking everything the evaluation will need before it plays."""
    from hp_rl.rl.envs import preset_for
    from hp_rl.rl.models import check_device
    from hp_rl.rl.runs import AgentRunFolder, RunConfig

    if episodes < 1:
        raise CliError(f"--episodes {episodes}: must be at least 1.")
    if routes is not None:  # what drawing needs is checked before any episode is played
        from hp_rl.rl.route_picture import RoutePictureError, require_matplotlib

        try:
            require_matplotlib()
        except RoutePictureError as error:
            raise CliError(str(error)) from error
    folder = AgentRunFolder(Path(run))
    if not folder.config.is_file():
        raise CliError(
            f"{run}: {folder.config} does not exist, so this is not a run folder. Give a folder made by "
            "python -m hp_rl.train (for example runs/ppo_CartPole-v1_nohub_1)."
        )
    folder.refuse_links()
    try:
        config = RunConfig.from_yaml(folder.config)
    except HpRlError as error:
        raise CliError(f"{run}: cannot read its config: {error}") from error
    config.device = check_device(device, "--device")
    if max_frames is not None:
        if preset_for(config.env_id, config.env_preset).wrapper != "atari":
            raise CliError(
                f"--max-frames applies to Atari games; {config.env_id} episodes end as the environment "
                "says. Drop --max-frames."
            )
        if max_frames < 1:
            raise CliError(f"--max-frames {max_frames}: must be at least 1.")
        config.env_kwargs = {**config.env_kwargs, "max_num_frames_per_episode": max_frames}
    if video is not None:
        _FrameWriter(Path(video), 30.0)  # fail on a bad format or a missing package before the evaluation
    return folder, config


def _load_for_evaluation(config: Any, folder: Any, path: Path, seed: int) -> tuple[Any, Any]:
    """The model of ``path`` on a one-copy evaluation environment seeded with ``seed``."""
    from hp_rl.core.archive import ArchiveError
    from hp_rl.rl.checkpoints import load_model
    from hp_rl.rl.envs import make_env

    env = make_env(config.env_id, 1, seed, config.env_preset, evaluation=True, env_kwargs=config.env_kwargs)
    try:
        with warnings.catch_warnings():  # a one-env evaluation model is not trained: its buffer size is moot
            warnings.filterwarnings("ignore", message=".*mini-batch size.*", category=UserWarning)
            model = load_model(config, path, env, folder, verbose=0)
    except ArchiveError as error:
        env.close()
        raise CliError(
            f"{path} cannot be used: {error} Try --checkpoint latest or an earlier file in checkpoints/."
        ) from error
    except BaseException:
        env.close()
        raise
    env.seed(seed)  # SB3's load seeds the env with the training seed; the evaluation (and its replay) use this one
    return model, env


def _play_episodes(model: Any, env: Any, episodes: int, deterministic: bool, progress: bool) -> dict[str, Any]:
    """Play ``episodes`` noise-free episodes (closing ``env``): their returns and lengths, summarised."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from hp_rl.rl.pathway_control import routing_noise

    started = time.time()
    bar = _EpisodeBar(episodes, enabled=progress)
    try:
        with routing_noise(model, enabled=False):
            returns, lengths = evaluate_policy(
                model,
                env,
                n_eval_episodes=episodes,
                deterministic=deterministic,
                return_episode_rewards=True,
                callback=bar.update,
            )
    finally:
        bar.close()
        env.close()
    rewards = np.asarray(returns, dtype=np.float64)
    steps = np.asarray(lengths, dtype=np.float64)
    return {
        "mean_return": float(rewards.mean()),
        "std_return": float(rewards.std()),
        "mean_length": float(steps.mean()),
        "std_length": float(steps.std()),
        "returns": [float(r) for r in rewards],
        "lengths": [int(n) for n in steps],
        "seconds": round(time.time() - started, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    configure_logging()
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        show = not args.no_progress and sys.stderr.isatty()
        result = evaluate_run(
            args.run,
            args.episodes,
            args.deterministic,
            args.checkpoint,
            args.seed,
            args.device,
            args.video,
            args.max_frames,
            progress=show,
            routes=args.routes,
        )
    except HpRlError as error:
        if args.verbose:
            traceback.print_exc()
        print(error_message(error), file=sys.stderr)
        return 2
    mode = "deterministic" if args.deterministic else "stochastic"
    print(
        f"{Path(result['checkpoint']).name} ({result['num_timesteps']} steps), {result['episodes']} {mode} episodes: "
        f"return {result['mean_return']:.2f} ± {result['std_return']:.2f}, "
        f"length {result['mean_length']:.1f} ± {result['std_length']:.1f}"
    )
    if "video" in result:
        video = result["video"]
        print(f"Video: {video['path']} ({video['episode']}: {video['frames']} frames, return {video['return']:.2f})")
    if "routes" in result:
        routes = result["routes"]
        print(f"Routes: {routes['path']} ({routes['episode']}: {routes['steps']} steps)")
    print(f"Written to {Path(args.run) / 'evaluation.yml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
