"""Where edits run: one replica in this process, or replicas on Ray Serve (one per GPU, or CPU replicas).

Both give the app the same thing: `stream(request)`, the replica's events (see `replica`). Ray Serve keeps a bounded
queue per deployment, scales replicas with it, and starts a new replica when one dies; the request that died with
it is retried here once, on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import SetupError
from ..extras import install_command
from .form import EditRequest
from .replica import EditReplica, Event, error_event

logger = logging.getLogger("ifedit")

APP_NAME = "ifedit"
# Ray Serve's autoscaler adds a replica while more than this many requests per replica are running or queued.
TARGET_ONGOING = 1


class LocalBackend:
    """One replica in the server's own process; `start` loads its model."""

    max_replicas = 1

    def __init__(self, new_replica: Callable[[], EditReplica]):
        self._new_replica = new_replica
        self.replica: EditReplica | None = None

    async def start(self) -> None:
        self.replica = await asyncio.to_thread(self._new_replica)

    def stream(self, request: EditRequest) -> AsyncIterator[Event]:
        return self.replica.stream(request)

    async def close(self) -> None:
        if self.replica is not None:
            self.replica.close()


@dataclass(frozen=True)
class RayPlan:
    """How many replicas, where, and what each loads."""

    address: str | None  # None: a Ray cluster on this machine; "auto" or "ray://...": join that one
    replicas: int  # at the start
    min_replicas: int
    max_replicas: int  # the autoscaler moves between these two with the queue
    queue_size: int  # requests waiting per replica beyond the one it runs
    replica_args: tuple[Any, ...]  # EditReplica(*replica_args), less the thread count decided here

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas != self.max_replicas


class RayBackend:
    """EditReplicas as a Ray Serve deployment; `start` deploys them and returns once they are all loaded."""

    def __init__(self, plan: RayPlan):
        self.plan = plan
        self.max_replicas = plan.max_replicas
        self.handle = None
        self._started_ray = False
        self._deployed = False  # only an application this server deployed is deleted when it stops

    async def start(self) -> None:
        await asyncio.to_thread(self._deploy)

    def _deploy(self) -> None:
        ray, serve = import_ray_serve()
        if not ray.is_initialized():
            try:
                ray.init(address=self.plan.address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise SetupError(
                    f"cannot start or join the Ray cluster at {self.plan.address or 'this machine'}: {error}"
                ) from None
            self._started_ray = True
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            actor, threads = {"num_gpus": 1}, None
        else:
            # CPU replicas share the cluster's cores; torch in each uses as many threads as it was given cores.
            threads = max(1, cpus // self.max_replicas)
            actor = {"num_cpus": threads}
        serve.start(proxy_location="Disabled")
        if APP_NAME in serve.status().applications:
            raise SetupError(f"a Serve application named {APP_NAME!r} already runs on this Ray cluster")
        scaling: dict[str, Any] = {"num_replicas": self.plan.replicas}
        if self.plan.autoscaling:
            scaling = {
                "autoscaling_config": {
                    "min_replicas": self.plan.min_replicas,
                    "initial_replicas": self.plan.replicas,
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": TARGET_ONGOING,
                }
            }
        deployment = serve.deployment(
            name="EditReplica",
            max_ongoing_requests=1,
            # Ray counts its queue per caller (this server); the server's own admission is the tighter bound.
            max_queued_requests=self.max_replicas * self.plan.queue_size + self.max_replicas,
            ray_actor_options=actor,
            **scaling,
        )(EditReplica)
        logger.info("Ray Serve: %d %s replicas", self.plan.replicas, "GPU" if gpus else "CPU")
        self._deployed = True
        try:
            self.handle = serve.run(
                deployment.bind(*self.plan.replica_args, threads), name=APP_NAME, route_prefix=None
            )
        except RuntimeError as error:
            raise SetupError(f"the replicas did not start: {_last_line(str(error))}") from None

    async def stream(self, request: EditRequest) -> AsyncIterator[Event]:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        for attempt in (1, 2):
            response = self.handle.options(stream=True).stream.remote(request)
            finished = False
            try:
                async for event in response:
                    yield event
                finished = True
                return
            except BackPressureError:
                finished = True
                yield error_event(503, "busy", "every replica's queue is full; try again later")
                return
            except RayActorError as error:
                finished = True
                if attempt == 2:
                    yield error_event(503, "replica_lost", "the replicas running this edit died; try again later")
                    return
                logger.warning("a replica died during an edit (%s); retrying it once", _last_line(str(error)))
                yield {"event": "retried"}
            finally:
                if not finished:  # given up on: the replica stops at its next step
                    response.cancel()

    async def close(self) -> None:
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        if not (self._deployed or self._started_ray):
            return
        ray, serve = import_ray_serve()
        if self._deployed:
            with contextlib.suppress(Exception):  # a cluster already gone has nothing left to delete
                serve.delete(APP_NAME)
        if self._started_ray:
            serve.shutdown()
            ray.shutdown()


def import_ray_serve():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SetupError(f"--replicas and --ray need Ray Serve: {install_command('serve')}") from None
    return ray, serve


def _last_line(text: str) -> str:
    """The line that names an error in a message that may end a traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
