"""Run independent jobs (the runs of a sweep, the experts of a hub build) here, in processes, or on Ray.

Every job writes its own result files, so the three backends differ only in where a job runs:

- ``serial``: one after another in this process (the default; nothing to install);
- ``processes``: a local pool of ``jobs`` spawned processes;
- ``ray``: one Ray task per job, with its own CPU (and GPU) request. ``address=None`` starts a local Ray
  with ``jobs`` CPUs (``ray.init(num_cpus=jobs)``); an address (``auto``, ``ray://host:10001``) joins a
  running cluster, whose nodes must have hp_rl installed and the job's files at the same paths (a shared
  file system). Ray comes with the ``sweep`` extra: ``pip install "hp_rl[sweep]"``.

A failed job is reported through ``on_error`` and the others go on; a finished job through ``on_result``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Literal

from hp_rl.core.errors import HpRlError

__all__ = ["Backend", "BackendError", "run_jobs", "ray_available"]

BackendKind = Literal["serial", "processes", "ray"]


class BackendError(HpRlError, ValueError):
    """A backend that cannot run here (Ray missing, a bad address, a bad job count)."""


@dataclass(frozen=True)
class Backend:
    """Where jobs run.

    :param kind: ``serial``, ``processes`` or ``ray``.
    :param jobs: parallel processes (``processes``), or the CPUs of a local Ray (``ray`` without address).
    :param address: a Ray cluster to join, or ``None`` for a local one.
    :param cpus_per_job: CPUs each Ray task asks for.
    :param gpus_per_job: GPUs each Ray task asks for (fractions share a GPU).
    """

    kind: BackendKind = "serial"
    jobs: int = 1
    address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0

    def check(self) -> Backend:
        """``self`` if usable here; raises :class:`BackendError` naming the problem and the fix."""
        if self.kind not in ("serial", "processes", "ray"):
            raise BackendError(f"Unknown backend {self.kind!r}; choose serial, processes or ray.")
        if self.jobs < 1:
            raise BackendError(f"jobs={self.jobs}: must be at least 1.")
        if self.cpus_per_job <= 0 or self.gpus_per_job < 0:
            raise BackendError(f"A job needs > 0 CPUs and >= 0 GPUs, got {self.cpus_per_job} and {self.gpus_per_job}.")
        if self.kind == "ray" and not ray_available():
            raise BackendError('Ray is not installed: pip install "hp_rl[sweep]" (or pip install ray), or drop --ray.')
        return self


def ray_available() -> bool:
    """Whether ``import ray`` would work."""
    return importlib.util.find_spec("ray") is not None


Job = Callable[..., Any]


def run_jobs(
    function: Job,
    jobs: Sequence[tuple[Any, ...]],
    backend: Backend,
    on_result: Callable[[int, Any], None],
    on_error: Callable[[int, BaseException], None],
) -> None:
    """Call ``function(*jobs[i])`` for every ``i`` on ``backend``.

    :param function: a module-level function (it is pickled to other processes).
    :param jobs: the arguments of each call.
    :param on_result: called in this process with ``(i, result)`` as each job finishes.
    :param on_error: called with ``(i, exception)`` for a job that raised; the other jobs go on.
    """
    backend.check()
    if backend.kind == "serial" or not jobs:
        for index, args in enumerate(jobs):
            try:
                result = function(*args)
            except Exception as error:  # one failed job must not cost the others
                on_error(index, error)
            else:
                on_result(index, result)
        return
    if backend.kind == "processes":
        with ProcessPoolExecutor(max_workers=backend.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(function, *args): index for index, args in enumerate(jobs)}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception as error:
                    on_error(futures[future], error)
                else:
                    on_result(futures[future], result)
        return
    _run_on_ray(function, jobs, backend, on_result, on_error)


def _run_on_ray(
    function: Job,
    jobs: Sequence[tuple[Any, ...]],
    backend: Backend,
    on_result: Callable[[int, Any], None],
    on_error: Callable[[int, BaseException], None],
) -> None:
    import ray

    module = sys.modules.get(function.__module__)
    if module is not None and not function.__module__.startswith("hp_rl"):
        # A script's functions are no importable module on the workers: send their code along.
        ray.cloudpickle.register_pickle_by_value(module)
    started_here = not ray.is_initialized()
    if started_here:
        # Workers import hp_rl and the job's modules from the same places as this process.
        path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        try:
            if backend.address is None:
                os.environ["PYTHONPATH"] = path  # a local Ray's workers inherit this process's environment
                ray.init(num_cpus=backend.jobs, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(address=backend.address, runtime_env={"env_vars": {"PYTHONPATH": path}})
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = backend.address or "a local instance"
            raise BackendError(
                f"Ray could not start or join {where} ({error}). Check --ray-address (ray status "
                "on the head node prints it), or use --ray for a local Ray."
            ) from error
    try:
        remote = ray.remote(num_cpus=backend.cpus_per_job, num_gpus=backend.gpus_per_job, max_retries=0)(function)
        refs = {remote.remote(*args): index for index, args in enumerate(jobs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    on_error(refs[ref], error.cause if isinstance(error.cause, BaseException) else error)
                except ray.exceptions.RayError as error:  # a worker died (out of memory, killed)
                    on_error(refs[ref], error)
                else:
                    on_result(refs[ref], result)
    finally:
        if started_here:
            ray.shutdown()
