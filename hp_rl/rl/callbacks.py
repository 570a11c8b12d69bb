"""``GateUsageCallback``: routing statistics of every hub extractor of an SB3 model, in TensorBoard."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from hp_rl.rl.extractor import HubPathwayExtractor
from hp_rl.rl.pathway_control import find_hub_extractors
from hp_rl.routing import GateStatistics, GateSummary, Routes, coactivation_picture

__all__ = [
    "GateUsageCallback",
    "PathwayScheduleCallback",
    "PlainProgress",
    "concat_routes",
    "gate_layout",
    "chart_order",
    "duration_text",
]

logger = logging.getLogger(__name__)

# Images and histograms only make sense in TensorBoard.
_TENSORBOARD_ONLY = ("stdout", "log", "json", "csv")


def chart_order(names: Sequence[str]) -> list[int]:
    """Expert columns in the order TensorBoard lists their charts (by tag name), for the co-activation image."""
    return sorted(range(len(names)), key=lambda column: names[column])


def gate_layout(prefixes: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout of the gate tags (``SummaryWriter.add_custom_scalars``).

    One category per extractor (``gates``, ``gates/1``, ...), one multi-line chart per quantity: every
    expert's usage in one chart, every expert's weight in another, then confidence, then the routing
    summaries (entropy, balance, noise).

    :param prefixes: the tag prefixes of the watched extractors.
    """
    layout: dict[str, dict[str, list[Any]]] = {}
    for prefix in prefixes:
        tag = re.escape(prefix)
        layout[f"Gates ({prefix})"] = {
            "usage: share of observations routed to each expert (sums to k)": ["Multiline", [f"^{tag}/usage/"]],
            "weight: mean pathway weight of each expert (sums to 1)": ["Multiline", [f"^{tag}/weight/"]],
            "confidence: mean weight where routed": ["Multiline", [f"^{tag}/confidence/"]],
            "routing: entropy, balance cv2, noise std": ["Multiline", [f"^{tag}/(entropy|balance_cv2|noise_std)$"]],
        }
    return layout


def concat_routes(batches: Sequence[Routes]) -> Routes:
    """One :class:`Routes` for several batches routed by the same router, detached from the graph.

    Per-sample fields are concatenated along the batch; ``importance`` and ``load`` (sums over samples) are
    summed; ``balance_loss`` (one value per batch) is averaged over the batches.

    :param batches: at least one ``Routes``; all with the same ``m`` and ``k``. Batch ``j`` has ``B_j`` rows.
    :return: ``Routes`` with ``sum_j B_j`` rows.
    """
    if not batches:
        raise ValueError("concat_routes needs at least one batch.")
    parts = list(batches)

    def balance_terms() -> tuple[Tensor, Tensor]:  # only computed if asked for
        return (
            torch.stack([b.balance_loss.detach() for b in parts]).mean(),
            torch.stack([b.load.detach() for b in parts]).sum(0),
        )

    return Routes(
        weights=torch.cat([b.weights.detach() for b in parts]),
        indices=torch.cat([b.indices.detach() for b in parts]),
        clean_logits=torch.cat([b.clean_logits.detach() for b in parts]),
        noisy_logits=torch.cat([b.noisy_logits.detach() for b in parts]),
        noise_std=torch.cat([b.noise_std.detach() for b in parts]),
        importance=torch.stack([b.importance.detach() for b in parts]).sum(0),
        balance_terms=balance_terms,
    )


@dataclass
class _Tracker:
    """What the callback keeps for one hub extractor.

    :param extractor: the extractor watched.
    :param prefix: tag prefix, ``gates`` or ``gates/<index>``.
    :param window: statistics of every acting observation not yet written by a logger dump.
    :param seen_forwards: the extractor's ``acting_forwards`` when last looked at.
    :param pending: routes of acting observations since the last rollout end, not yet in ``window``.
    :param loss_sum: summed exploration loss of training forwards since the last rollout end (0-dim).
    :param loss_count: number of those training forwards.
    :param window_loss_sum: summed exploration loss of the training forwards in the window.
    :param window_loss_count: number of those training forwards.
    :param recorded: the window was handed to the logger and may not have been dumped yet.
    :param hook: the forward hook that collects the exploration loss.
    """

    extractor: HubPathwayExtractor
    prefix: str
    window: GateStatistics
    seen_forwards: int
    pending: list[Routes] = field(default_factory=list)
    loss_sum: Tensor | None = None
    loss_count: int = 0
    window_loss_sum: float = 0.0
    window_loss_count: int = 0
    recorded: bool = False
    hook: RemovableHandle | None = None


class GateUsageCallback(BaseCallback):
    """Logs how the hub extractors route observations, averaged over every acting observation.

    Works with any SB3 algorithm whose policy holds :class:`~hp_rl.rl.extractor.HubPathwayExtractor`
    modules; it finds them by itself with :func:`~hp_rl.rl.extractor.find_hub_extractors`, which leaves out
    target networks. Each observation the agent acts on is counted exactly once: every forward made outside
    training mode sets the extractor's ``last_acting_routes`` and increments its ``acting_forwards``, and
    ``_on_step`` takes those routes whenever the counter moved. So PPO/A2C's value bootstrap at the end of a
    rollout is overwritten by the next action before it could be counted, DQN's random (epsilon) actions,
    which make no forward, are not counted, and update passes (training mode) never are.

    Tags, for an extractor with prefix ``P`` (``gates`` for the first extractor, ``gates/<index>`` for the
    others, in :func:`find_hub_extractors` order; for PPO/A2C with ``share_features_extractor=False``,
    ``gates`` is the actor's extractor and ``gates/1`` the critic's; an extractor that never acts, such as
    SAC's critic, has no observations and is not logged):

    - ``P/usage/<expert>``: share of observations routed to the expert (sums to ``k`` over experts).
    - ``P/weight/<expert>``: mean pathway weight over all observations (sums to 1 over experts).
    - ``P/confidence/<expert>``: mean weight over the observations routed to the expert (left out for an
      expert that received none).
    - ``P/entropy`` (nats, in ``[0, log k]``), ``P/balance_cv2`` (cv^2 of the usage counts, 0 = balanced),
      ``P/noise_std`` (mean routing noise std), ``P/num_samples`` (observations averaged over).
    - ``P/explore_loss``: mean exploration (load balance) loss of the update passes (training-mode forwards)
      in the window, before ``explore_coef``; absent until an update ran. On-policy algorithms update after
      the rollout is recorded, so like SB3's own ``train/`` values it describes the previous update.
    - ``P/coactivation``: image of the ``(m, m)`` share of observations routed to both experts (diagonal:
      usage), ``coactivation_cell_px`` pixels per pair, black 0 to white 1, experts in the charts' order
      (by name), each row labelled with its expert (:func:`~hp_rl.routing.coactivation_picture`); the text
      ``P/coactivation_legend`` names each row and column too.
    - In ``<run>/experts/<expert>``, a TensorBoard run per expert: ``P/usage``, ``P/weight``, ``P/confidence``,
      so one chart shows every expert in its own colour with its name in the legend.
    - ``P/weight_hist/<expert>``: histogram of the weights the expert received when routed (at most
      ``max_histogram_samples`` of them per window; left out for an expert that received none).

    Per-expert tags carry the expert's name, so one chart group shows every expert side by side. Images and
    histograms go to TensorBoard only; per-expert scalars skip the console table unless
    ``per_expert_stdout`` (SB3 truncates console keys to 36 characters and fails on collisions).

    When statistics are written: at the end of a rollout once the window holds at least ``min_samples``
    observations. PPO/A2C dump the logger right after each rollout (every ``log_interval`` rollouts), so with
    ``n_steps * n_envs >= min_samples`` every rollout gets its own values. Off-policy algorithms collect a
    few steps per rollout and dump when episodes end; the window is only cleared once a dump has written it,
    so a value in TensorBoard always averages every observation since the previous dump, none lost or
    counted twice. At the end of training, observations not yet written (fewer than ``min_samples``, or
    recorded but never dumped, as off-policy algorithms do not dump after the last steps) are recorded and
    the logger is dumped once more if ``flush_on_training_end``; that dump also writes whatever else is
    pending in the logger (such as the last update's ``train/`` values).

    Put this callback before an ``EvalCallback`` in a ``CallbackList``: evaluation forwards also leave their
    routes in the extractor. Forwards whose batch is not one observation per training environment are skipped
    for that reason, but an evaluation with as many environments as training would be counted in place of
    the step's action.

    :param min_samples: acting observations a window needs before it is recorded at a rollout end.
    :param max_histogram_samples: cap on the weights kept per expert and window for the histograms.
    :param coactivation_cell_px: side in pixels of one expert pair in the co-activation image.
    :param per_expert_stdout: also print the per-expert scalars in SB3's console table and text log.
    :param flush_on_training_end: record and dump what is left when training ends.
    :param verbose: SB3 verbosity (1 prints which extractors are watched).
    """

    def __init__(
        self,
        min_samples: int = 1000,
        max_histogram_samples: int = 20_000,
        coactivation_cell_px: int = 16,
        per_expert_stdout: bool = False,
        flush_on_training_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {min_samples}.")
        if coactivation_cell_px < 1:
            raise ValueError(f"coactivation_cell_px must be at least 1, got {coactivation_cell_px}.")
        self.min_samples = min_samples
        self.max_histogram_samples = max_histogram_samples
        self.coactivation_cell_px = coactivation_cell_px
        self.per_expert_stdout = per_expert_stdout
        self.flush_on_training_end = flush_on_training_end
        self._trackers: list[_Tracker] = []
        self._expert_writers: dict[str, Any] = {}  # expert name -> its TensorBoard writer (a run of its own)

    @property
    def extractors(self) -> dict[str, HubPathwayExtractor]:
        """The extractors watched, by tag prefix (filled when training starts)."""
        return {tracker.prefix: tracker.extractor for tracker in self._trackers}

    def summaries(self) -> dict[str, GateSummary]:
        """Current window of each extractor by tag prefix (extractors with no observation yet left out)."""
        return {t.prefix: t.window.summary() for t in self._trackers if t.window.num_samples}

    # SB3 hooks -------------------------------------------------------------------------------------------

    def _init_callback(self) -> None:
        self._remove_hooks()
        extractors = find_hub_extractors(self.model)
        if not extractors:
            raise ValueError(
                "GateUsageCallback found no HubPathwayExtractor in the model's policy: pass "
                "policy_kwargs=dict(features_extractor_class=HubPathwayExtractor, ...) or drop the callback."
            )
        self._trackers = []
        for index, extractor in enumerate(extractors):
            tracker = _Tracker(
                extractor=extractor,
                prefix="gates" if index == 0 else f"gates/{index}",
                window=GateStatistics(extractor.num_experts, self.max_histogram_samples),
                seen_forwards=extractor.acting_forwards,
            )
            tracker.hook = extractor.register_forward_hook(self._loss_hook(tracker))
            self._trackers.append(tracker)
        self._write_layout()
        if self.verbose >= 1:
            for tracker in self._trackers:
                names = ", ".join(tracker.extractor.expert_names)
                logger.info(f"GateUsageCallback: {tracker.prefix}/ <- hub extractor with experts {names}")

    def _write_layout(self) -> None:
        """TensorBoard's custom-scalars layout: one chart per quantity with every expert as a line."""
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        writers = [f.writer for f in self.logger.output_formats if isinstance(f, TensorBoardOutputFormat)]
        if not writers:
            return
        writers[0].add_custom_scalars(gate_layout([t.prefix for t in self._trackers]))
        for tracker in self._trackers:  # what the rows and columns of the co-activation image are
            names = tracker.extractor.expert_names
            rows = "\n".join(f"| {i} | {names[c]} |" for i, c in enumerate(chart_order(names)))
            writers[0].add_text(
                f"{tracker.prefix}/coactivation_legend",
                "Rows and columns of the co-activation image, top/left first (the charts' order):\n\n"
                f"| row/column | expert |\n|---|---|\n{rows}",
            )
        scores = getattr(self.model, "prior_scores", None)
        if scores and self._trackers:  # what prior="auto" found, as the console said it (indented: fixed width)
            from hp_rl.rl.prior_report import prior_table

            extractor = self._trackers[0].extractor
            table = prior_table(scores, extractor.unrouted, extractor.expert_names)
            writers[0].add_text("hub/prior", "\n".join("    " + line for line in table.splitlines()))
        writers[0].flush()

    def _on_step(self) -> bool:
        num_envs = self.training_env.num_envs if self.training_env is not None else None
        for tracker in self._trackers:
            extractor = tracker.extractor
            count = extractor.acting_forwards
            routes = extractor.last_acting_routes
            # A batch of another size is an evaluation forward made by a callback that ran before this one.
            if (
                routes is not None
                and count != tracker.seen_forwards
                and (num_envs is None or routes.weights.shape[0] == num_envs)
            ):
                tracker.pending.append(routes)
            tracker.seen_forwards = count
        return True

    def _on_rollout_end(self) -> None:
        for tracker in self._trackers:
            self._absorb(tracker)
            if tracker.window.num_samples >= self.min_samples:
                self._record(tracker)

    def _on_training_end(self) -> None:
        if self.flush_on_training_end:
            flush = False
            for tracker in self._trackers:
                self._absorb(tracker)
                if tracker.window.num_samples > 0:
                    self._record(tracker)
                    flush = True
            if flush:
                self.logger.dump(self.num_timesteps)
        self._remove_hooks()
        self._close_expert_runs()

    # Internals -------------------------------------------------------------------------------------------

    def _loss_hook(self, tracker: _Tracker) -> Any:
        """A forward hook adding each training-mode forward's exploration loss to ``tracker``."""

        def hook(module: HubPathwayExtractor, args: tuple[Any, ...], output: Tensor) -> None:
            if module.training and module.last_output is not None:
                loss = module.last_output.explore_loss.detach()
                tracker.loss_sum = loss if tracker.loss_sum is None else tracker.loss_sum + loss
                tracker.loss_count += 1

        return hook

    def _remove_hooks(self) -> None:
        for tracker in self._trackers:
            if tracker.hook is not None:
                tracker.hook.remove()
                tracker.hook = None

    def _was_dumped(self, tracker: _Tracker) -> bool:
        """Whether the logger wrote (and forgot) what was last recorded for ``tracker``."""
        values = getattr(self.logger, "name_to_value", None)
        return values is None or f"{tracker.prefix}/num_samples" not in values

    def _absorb(self, tracker: _Tracker) -> None:
        """Start a new window if the last one was dumped, then move the pending routes and losses into it."""
        if tracker.recorded and self._was_dumped(tracker):
            tracker.window.reset()
            tracker.window_loss_sum = 0.0
            tracker.window_loss_count = 0
            tracker.recorded = False
        if tracker.pending:
            tracker.window.update(concat_routes(tracker.pending))
            tracker.pending = []
        if tracker.loss_sum is not None:
            tracker.window_loss_sum += float(tracker.loss_sum)
            tracker.window_loss_count += tracker.loss_count
            tracker.loss_sum = None
            tracker.loss_count = 0

    def _record(self, tracker: _Tracker) -> None:
        """Hand the window's averages to the logger (overwriting an earlier, not yet dumped, record)."""
        summary = tracker.window.summary()
        prefix = tracker.prefix
        per_expert = None if self.per_expert_stdout else ("stdout", "log")
        for column, name in enumerate(tracker.extractor.expert_names):
            self.logger.record(f"{prefix}/usage/{name}", float(summary.usage[column]), exclude=per_expert)
            self.logger.record(f"{prefix}/weight/{name}", float(summary.mean_weight[column]), exclude=per_expert)
            confidence = float(summary.confidence[column])
            if not math.isnan(confidence):
                self.logger.record(f"{prefix}/confidence/{name}", confidence, exclude=per_expert)
            routed = summary.routed_weights[column]
            if routed.numel():
                self.logger.record(f"{prefix}/weight_hist/{name}", routed, exclude=_TENSORBOARD_ONLY)
        self.logger.record(f"{prefix}/entropy", summary.entropy)
        self.logger.record(f"{prefix}/balance_cv2", summary.balance_cv2)
        self.logger.record(f"{prefix}/noise_std", summary.noise_std)
        self.logger.record(f"{prefix}/num_samples", summary.num_samples)
        if tracker.window_loss_count:
            self.logger.record(f"{prefix}/explore_loss", tracker.window_loss_sum / tracker.window_loss_count)
        names = tracker.extractor.expert_names
        order = chart_order(names)
        picture = coactivation_picture(
            summary.coactivation[order][:, order], [names[c] for c in order], self.coactivation_cell_px
        )
        self.logger.record(f"{prefix}/coactivation", Image(picture, "HW"), exclude=_TENSORBOARD_ONLY)
        self._write_expert_runs(tracker, summary)
        tracker.recorded = True

    def _write_expert_runs(self, tracker: _Tracker, summary: GateSummary) -> None:
        """Usage, weight and confidence of each expert as ``P/usage`` ... in a run of its own, ``<tb run>/experts/
        <name>``: TensorBoard then draws each expert in its own colour with its name in the legend."""
        from stable_baselines3.common.logger import TensorBoardOutputFormat
        from torch.utils.tensorboard import SummaryWriter

        formats = [f for f in self.logger.output_formats if isinstance(f, TensorBoardOutputFormat)]
        if not formats:
            return
        root = Path(formats[0].writer.log_dir) / "experts"
        for column, name in enumerate(tracker.extractor.expert_names):
            writer = self._expert_writers.get(name)
            if writer is None:
                writer = self._expert_writers[name] = SummaryWriter(str(root / re.sub(r"[^\w.-]", "_", name)))
            values = {"usage": summary.usage[column], "weight": summary.mean_weight[column]}
            values["confidence"] = summary.confidence[column]
            for kind, value in values.items():
                if not math.isnan(float(value)):
                    writer.add_scalar(f"{tracker.prefix}/{kind}", float(value), self.num_timesteps)
            writer.flush()

    def _close_expert_runs(self) -> None:
        for writer in self._expert_writers.values():
            writer.close()
        self._expert_writers = {}


class PathwayScheduleCallback(BaseCallback):
    """Applies the pathway schedules (``noise_anneal``, ``dense_warmup``, ``explore_decay``, ``unfreeze_at``) of
    every hub extractor at the training progress, for any SB3 algorithm.

    :class:`~hp_rl.rl.algorithms.HubPPO` and ``HubA2C`` apply them when each rollout starts; with SB3's own
    algorithms (PPO, A2C, DQN, SAC, ... and a ``HubPathwayExtractor`` in ``policy_kwargs``) nothing would, and
    the schedules would stay at their start values. Pass this callback to ``learn``: it applies them at the
    start of training and of every rollout (DQN: every ``train_freq`` steps), at progress
    ``1 - _current_progress_remaining``, the fraction of ``learn``'s ``total_timesteps`` done, as SB3's own
    learning-rate schedules read it.
    """

    def _apply(self) -> None:
        from hp_rl.rl.pathway_control import set_training_progress

        remaining = float(getattr(self.model, "_current_progress_remaining", 1.0))
        set_training_progress(self.model, min(max(1.0 - remaining, 0.0), 1.0))

    def _on_training_start(self) -> None:
        self._apply()

    def _on_rollout_start(self) -> None:
        self._apply()

    def _on_step(self) -> bool:
        return True


def duration_text(seconds: float) -> str:
    """``H:MM:SS``, with days in front past 24 hours."""
    days, rest = divmod(int(seconds), 86_400)
    text = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


class PlainProgress(BaseCallback):
    """Prints ``step X/N (p%), steps/s, ETA`` lines every ``every_s`` seconds: progress for log files, where a
    progress bar would write control characters.

    :param every_s: seconds between lines.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s

    def _on_training_start(self) -> None:
        self.start_steps = self.num_timesteps
        self.total = int(self.locals["total_timesteps"])
        self.started = self.last = time.time()

    def _on_step(self) -> bool:
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            done = self.num_timesteps - self.start_steps
            rate = done / max(now - self.started, 1e-9)
            eta = (self.total - self.num_timesteps) / max(rate, 1e-9)
            print(
                f"step {self.num_timesteps}/{self.total} ({100 * self.num_timesteps / max(self.total, 1):.0f}%), "
                f"{rate:.0f} steps/s, ETA {duration_text(eta)}",
                flush=True,
            )
        return True
