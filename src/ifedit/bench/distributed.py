"""The edit stage on a Ray cluster: one actor per GPU (or CPU workers where there is none) pulling from one queue.

Ray is imported only here and only when asked for, so the rest of the harness runs without it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from ..errors import SetupError
from ..extras import install_command
from .layout import describe_error
from .runner import CaseEditor, Outcome, RunPlan, Task

logger = logging.getLogger("ifedit")

MAX_ATTEMPTS = 3  # a case whose worker died this many times is recorded as failed instead of retried again


def import_ray():
    try:
        import ray
    except ImportError:
        raise SetupError(f"--ray needs Ray: {install_command('bench')}") from None
    return ray


def ray_outcomes(
    tasks: Sequence[Task],
    plan: RunPlan,
    address: str | None,
    workers: int | None = None,
    worker_class: type = CaseEditor,
    worker_args: tuple[Any, ...] | None = None,
) -> Iterator[Outcome]:
    """Outcomes of `tasks` as Ray workers finish them; `address` joins a running cluster, None starts a local one.

    A case whose worker crashes (out of memory, a killed process) goes back to the queue for another worker, at
    most MAX_ATTEMPTS times; the dead worker is replaced. A worker that cannot start (the model does not load) ends
    the run with its reason instead.
    """
    if not tasks:
        return
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise SetupError(f"cannot start or join the Ray cluster at {address or 'this machine'}: {error}") from None
    try:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        kind, available = ("GPU", gpus) if gpus else ("CPU", max(1, cpus))
        if workers and workers > available:
            # Actors beyond the cluster's resources are never placed, and the run would wait for them forever.
            logger.warning("--workers %d: the Ray cluster has %d %ss; using %d", workers, available, kind, available)
        count = min(workers or available, available, len(tasks))
        logger.info("Ray: %d %s workers", count, kind)
        options, threads = ({"num_gpus": 1}, None) if gpus else ({"num_cpus": 1}, 1)
        remote = ray.remote(max_restarts=0, max_task_retries=0, **options)(_Worker)
        args = worker_args if worker_args is not None else (plan.preset, plan.load_options, plan.settings, threads)
        yield from _schedule(ray, lambda: remote.remote(worker_class, args), tasks, count)
    finally:
        if started:
            ray.shutdown()


class _Worker:
    """The Ray actor: a `worker_class` (a CaseEditor) built from `args`. Ray reports a constructor's error as a dead
    actor whose message is a traceback, so the reason a worker could not start is kept for `ready` to return."""

    def __init__(self, worker_class: type, args: tuple[Any, ...]):
        try:
            self.worker, self.failure = worker_class(*args), None
        except Exception as error:  # noqa: BLE001 - reported by ready(), which the scheduler calls first
            self.worker, self.failure = None, describe_error(error)[0].splitlines()[0]

    def ready(self) -> str | None:
        """None once the worker can take cases, else why it could not start."""
        return self.failure

    def run(self, task: Task) -> Outcome:
        return self.worker.run(task)


def _schedule(ray, new_worker: Callable[[], Any], tasks: Sequence[Task], count: int) -> Iterator[Outcome]:
    """Start the workers; hand each ready, idle one the next case until the queue is empty; requeue the case of a
    worker that died. A worker is given cases only once its `ready` says it started. A case's source is decoded
    as it is handed out, so only the cases in flight hold pixels; one that cannot be decoded fails alone."""
    queue = deque((task, 1) for task in tasks)
    idle: list[Any] = []
    running: dict[Any, tuple[Any, Task | None, int]] = {}  # a start is a running call without a task

    def start() -> None:
        worker = new_worker()
        running[worker.ready.remote()] = (worker, None, 0)

    for _ in range(count):
        start()
    replacements = 2 * count
    try:
        while queue or any(task is not None for _, task, _ in running.values()):
            while queue and idle:
                task, attempt = queue.popleft()
                try:
                    shipped = replace(task, source=task.pixels())
                except Exception as error:  # noqa: BLE001 - one bad source must not end a run of hundreds
                    yield Outcome(task.case, None, None, *describe_error(error))
                    continue
                worker = idle.pop()
                running[worker.run.remote(shipped)] = (worker, task, attempt)
            if not running:
                raise SetupError("every Ray worker died; see the failure records and the Ray logs")
            [ready], _ = ray.wait(list(running), num_returns=1)
            worker, task, attempt = running.pop(ready)
            try:
                outcome = ray.get(ready)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                ray.kill(worker)
                if task is None:
                    raise SetupError(f"a Ray worker died while loading the model: {reason}") from None
                if replacements > 0:
                    replacements -= 1
                    start()
                if attempt < MAX_ATTEMPTS:
                    logger.warning("a worker died on case %s (%s); retrying it elsewhere", task.case.id, reason)
                    queue.append((task, attempt + 1))
                else:
                    yield Outcome(task.case, error=f"worker died {attempt} times on this case; last: {reason}")
                continue
            if task is None and outcome is not None:
                ray.kill(worker)
                raise SetupError(f"a Ray worker could not start: {outcome}")
            idle.append(worker)
            if task is not None:
                yield outcome
    finally:
        for worker, _, _ in running.values():
            ray.kill(worker)
        for worker in idle:
            ray.kill(worker)
