"""Route pictures: which observations go to which expert, and the route share along an episode.

``python -m hp_rl.evaluate RUN --routes routes.png`` plays one noise-free episode and draws two panels: for
every expert, the observations of the episode it weighed most (the ones it was routed with the highest weight),
and, below, each expert's pathway weight along the episode. Needs matplotlib (the ``vision`` or ``dev`` extra).
Training logs the same picture to TensorBoard (``routes/episode``, Images tab) after every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hp_rl.core.errors import HpRlError

__all__ = ["EpisodeRoutes", "RoutePictureError", "draw_routes", "record_routes", "require_matplotlib", "routes_image"]


class RoutePictureError(HpRlError, ValueError):
    """A route picture that cannot be made (no hub in the model, matplotlib missing)."""


@dataclass(frozen=True)
class EpisodeRoutes:
    """One episode's observations and pathway weights.

    :param observations: ``(T, ...)`` the observations the policy acted on.
    :param weights: ``(T, m)`` pathway weights (rows sum to 1; k non-zeros, plus a base expert's).
    :param expert_names: the m experts, in column order.
    :param episode_return: the episode's return.
    """

    observations: np.ndarray
    weights: np.ndarray
    expert_names: tuple[str, ...]
    episode_return: float


def record_routes(model: Any, env: Any, max_steps: int = 2_000) -> EpisodeRoutes:
    """Play one deterministic, noise-free episode of ``model`` on ``env`` (one environment) and keep the routes.

    :param model: an SB3 model whose policy holds a :class:`~hp_rl.rl.extractor.HubPathwayExtractor`.
    :param env: a vectorised environment with one copy (the evaluation environment).
    :param max_steps: stop after this many steps if the episode has not ended.
    """
    from hp_rl.rl.pathway_control import find_hub_extractors, routing_noise

    extractors = find_hub_extractors(model)
    if not extractors:
        raise RoutePictureError("--routes needs a hub run: this model's policy has no HubPathwayExtractor.")
    extractor = extractors[0]
    observations, weights, total = [], [], 0.0
    observation = env.reset()
    with routing_noise(model, enabled=False):
        for _ in range(max_steps):
            action, _ = model.predict(observation, deterministic=True)
            routes = extractor.last_acting_routes
            if routes is not None:
                observations.append(np.asarray(observation[0]))
                weights.append(routes.weights[0].detach().to("cpu").double().numpy())
            observation, reward, done, infos = env.step(action)
            total += float(reward[0])
            if done[0]:
                episode = infos[0].get("episode")
                total = float(episode["r"]) if episode is not None else total
                break
    if not weights:
        raise RoutePictureError("The episode made no routed forward; nothing to draw.")
    return EpisodeRoutes(np.stack(observations), np.stack(weights), extractor.expert_names, total)


def _as_image(observation: np.ndarray) -> np.ndarray:
    """A 2-D picture of one observation: the last frame of a stack, MinAtar's channels by index, a vector as a row."""
    array = np.asarray(observation, dtype=np.float64)
    if array.ndim == 1:
        return array[None, :]
    if array.ndim == 3:
        chw = np.moveaxis(array, -1, 0) if array.shape[-1] < array.shape[0] else array
        if np.isin(array, (0.0, 1.0)).all():  # object channels (MinAtar): each cell shows which channel is on
            return np.where(chw.max(axis=0) > 0, chw.argmax(axis=0) + 1, 0).astype(np.float64)
        return chw[-1]  # stacked grey frames: the newest
    return array.reshape(array.shape[0], -1)


def require_matplotlib() -> None:
    """Raise :class:`RoutePictureError` (naming the install) where matplotlib is missing; nothing otherwise."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise RoutePictureError(
            "route pictures are drawn with matplotlib, which hp_rl installs: pip install matplotlib "
            "(or reinstall hp_rl)."
        ) from error
    return plt


def _figure(routes: EpisodeRoutes, per_expert: int) -> Any:
    """The route picture as a matplotlib figure (the caller closes it)."""
    plt = _pyplot()
    names, weights = routes.expert_names, routes.weights
    shown = [column for column in range(len(names)) if (weights[:, column] > 0).any()]  # a row per routed expert
    unrouted = [names[column] for column in range(len(names)) if column not in shown]
    m = len(shown)
    figure = plt.figure(figsize=(1.6 * per_expert + 1.5, 1.6 * m + 2.6))
    grid = figure.add_gridspec(m + 1, per_expert, height_ratios=[1.0] * m + [1.6])
    for row, column_of_expert in enumerate(shown):
        name = names[column_of_expert]
        routed = np.flatnonzero(weights[:, column_of_expert] > 0)
        chosen = routed[np.argsort(-weights[routed, column_of_expert], kind="stable")][:per_expert]
        for column in range(per_expert):
            axis = figure.add_subplot(grid[row, column])
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(f"{name}\n{len(routed)}/{len(weights)}", rotation=0, ha="right", va="center")
            if column < len(chosen):
                step = int(chosen[column])
                axis.imshow(_as_image(routes.observations[step]), cmap="viridis", interpolation="nearest")
                axis.set_title(f"t={step} w={weights[step, column_of_expert]:.2f}", fontsize=7)
            else:
                axis.axis("off")
    share = figure.add_subplot(grid[m, :])
    share.stackplot(np.arange(len(weights)), weights.T, labels=list(names), step="post")
    share.set_xlim(0, max(len(weights) - 1, 1))
    share.set_ylim(0, 1)
    share.set_xlabel("step of the episode" + (f"   (not routed: {', '.join(unrouted)})" if unrouted else ""))
    share.set_ylabel("pathway weight")
    share.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    title = (
        f"Routes of one noise-free episode (return {routes.episode_return:.1f}): the observations each expert "
        "weighed most, and the weights along the episode"
    )
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def draw_routes(routes: EpisodeRoutes, path: Path, per_expert: int = 6) -> Path:
    """Write the route picture of ``routes`` to ``path`` (PNG); returns ``path``.

    :param per_expert: observations shown per expert (those it weighed most).
    """
    figure = _figure(routes, per_expert)
    path.parent.mkdir(parents=True, exist_ok=True)
    from hp_rl.core.paths import written_by_rename

    with written_by_rename(Path(path)) as partial:  # a new file: a link at ``path`` is replaced, not written through
        figure.savefig(partial, dpi=90, format="png")
    _pyplot().close(figure)
    return path


def routes_image(routes: EpisodeRoutes, per_expert: int = 6) -> np.ndarray:
    """The route picture of ``routes`` as an ``(H, W, 3)`` uint8 array (for TensorBoard's image tab)."""
    figure = _figure(routes, per_expert)
    figure.set_dpi(72)
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    _pyplot().close(figure)
    return np.ascontiguousarray(rgba[..., :3])
