"""The Ray cluster of a run ([cluster] in the recipe, or --cluster): joining it, and the run's
independent work sent to it as Ray tasks.

Ray is an optional extra (pip install 'edgeship[ray]'), imported only here and in the QAT trainer
that runs on it. A task gets everything it needs in its arguments (through Ray's object store, so
no shared file system is needed) and gives its result back to the driver, which alone writes the
run folder and the stage cache: two tasks never write the same entry."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Callable

from edgeship.errors import DeviceError, UserError
from edgeship.progress import Forwarded, Progress, Relayed

INSTALL = "pip install 'edgeship[ray]'"


def require_ray(key: str) -> None:
    """Bad input before any work when the recipe asks for Ray and it is not installed."""
    try:
        import ray.train.torch  # noqa: F401
    except ImportError:
        raise UserError(f"{key} needs Ray, which is not installed here: {INSTALL}") from None


def connect(address: str, log: Callable[[str], None]) -> dict:
    """This process joins the cluster at `address` (once per process) and says which; returns its
    address, live nodes and CPUs, as the report keeps them."""
    import ray

    joined = not ray.is_initialized()
    if joined:
        _init(address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    cluster = {"address": address, "nodes": len(nodes),
               "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes)}
    if joined:
        what = "started a local Ray cluster" if address == "local" else f"connected to the Ray cluster at {address}"
        log(f"  {what}: {len(nodes)} node{'s' * (len(nodes) != 1)}, {cluster['cpus']:g} CPUs")
    return cluster


def _reachable(address: str, seconds: float = 10.0) -> None:
    """A HOST:PORT that accepts no connection fails now: ray.init would retry it for minutes,
    writing its C++ client's warnings on stderr. (auto and local are Ray's to find or start.)"""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as e:
        raise _unreachable(address, e.strerror or type(e).__name__) from None


def _init(address: str) -> None:
    import ray

    _reachable(address)

    # Ray's driver-side warnings (token authentication of a new local cluster, ...) are not the
    # run's to show; errors are raised.
    logging.getLogger("ray").setLevel(logging.ERROR)
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    try:
        if address == "local":
            ray.init(**quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise _unreachable(address, str(e).strip().splitlines()[0]) from None


def _unreachable(address: str, why: str) -> DeviceError:
    return DeviceError(f"cannot reach the Ray cluster at cluster.address = {address!r} (the recipe's "
                       f"[cluster] or --cluster ADDRESS names one; 'local' starts one for the run): {why}")


def queue_here():
    """A Ray queue whose actor (0 CPUs) runs on this process's node where it can: for what tasks
    and Ray Train workers send back to the driver."""
    import ray
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


class TaskFailed(Exception):
    """A Ray task's work raised, or Ray lost the task (its node went away). The message is already
    the one line a stage records: the worker described its exception where its traceback was."""


class Tasks:
    """Work sent to the cluster as Ray tasks, each placed wherever a node has a CPU free; results
    are taken back in any order the caller likes, while the driver does other work."""

    def __init__(self, cluster: dict, by_value: str, progress: Progress | None = None) -> None:
        self.cluster = cluster
        self.by_value = by_value  # the prefix of modules no worker can import: they travel as code
        self.task_seconds = 0.0  # the tasks' own seconds, summed: against a stage's wall time, the overlap
        self._call = None
        self._relayed = Relayed(progress or Progress(enabled=False))
        self._relaying = self._relayed.progress.enabled
        self._queue = None  # the tasks' progress events, for the driver to show

    def forwarded(self) -> Progress:
        """A progress for a task: what it shows, the driver shows as its own (its bars drawn while
        the driver waits in `result`). Events travel through a Ray queue on the driver's node."""
        if self._relaying and self._queue is None:
            try:
                self._queue = queue_here()
            except Exception:  # noqa: BLE001 - progress never fails the run: the tasks go on unseen
                self._relaying = False
        # sends nothing when the driver shows nothing (a Progress cannot travel: it holds a console)
        return Forwarded(_Sender(self._queue if self._relaying else None))

    def _show_forwarded(self) -> None:
        """The tasks' progress events so far, shown; progress that cannot be read is not shown
        (it never fails the run)."""
        if self._queue is None:
            return
        try:  # each call is a round trip to the queue's actor, every 0.2 s while the driver waits
            waiting = self._queue.qsize()
            events = self._queue.get_nowait_batch(waiting) if waiting else []
        except Exception:  # noqa: BLE001 - the queue's actor is gone with its node
            self._queue, self._relaying = None, False
            return
        for event in events:
            self._relayed.show(event)

    def _modules_by_value(self) -> None:
        """A user's model class from their own file, unknown to the workers, is pickled with its
        code instead of by its module's name."""
        from ray import cloudpickle

        for name, module in list(sys.modules.items()):
            if name.startswith(self.by_value):
                cloudpickle.register_pickle_by_value(module)

    def put(self, value: object):
        """`value` in the object store once, for many tasks (a task argument that is a reference
        arrives as its value); None when it cannot travel (it does not pickle)."""
        import ray

        self._modules_by_value()
        try:
            return ray.put(value)
        except Exception:  # noqa: BLE001 - pickling raises what the object's __reduce__ raises
            return None

    def submit(self, fn: Callable, args: tuple, describe: Callable[[BaseException], str]):
        """`fn(*args)` as a task (a reference to its result), or None when the arguments cannot
        travel: the caller does that work itself."""
        import ray

        self._modules_by_value()
        if self._call is None:  # one remote function for all tasks; a lost task fails its item: no retries
            self._call = ray.remote(num_cpus=1, max_retries=0)(_call)
        try:
            return self._call.remote(fn, describe, *args)  # top-level references arrive as values
        except Exception:  # noqa: BLE001 - as in put
            return None

    def submit_each(self, fn: Callable, args: dict, describe: Callable[[BaseException], str]) -> dict:
        """`fn(*args[key])` as a task for each key, all at once: {key: its reference}, without the
        keys whose arguments cannot travel (the caller does that work itself)."""
        sent = {key: self.submit(fn, each, describe) for key, each in args.items()}
        return {key: ref for key, ref in sent.items() if ref is not None}

    def result(self, ref) -> object:
        """A task's value, or the TaskFailed it ended with; its UserError is raised here."""
        import ray

        try:
            with self._relayed.live():
                while not ray.wait([ref], timeout=0.2)[0]:
                    self._show_forwarded()
            self._show_forwarded()  # a task's last events are sent before it returns
            status, value, took = ray.get(ref)
        except ray.exceptions.RayError as e:  # the task's node or worker went away
            said = [line for line in str(e).strip().splitlines() if line.strip()]
            status, value, took = "failed", f"Ray task lost: {said[0] if said else type(e).__name__}", 0.0
        self.task_seconds += took
        if status == "user":
            raise UserError(value)
        return TaskFailed(value) if status == "failed" else value


class _Sender:
    """A task's Forwarded events into the driver's queue; when that fails (the driver's node is
    gone), the task goes on without showing its progress."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def __call__(self, event: tuple) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(event)
        except Exception:  # noqa: BLE001 - progress never fails the work
            self.queue = None


def _call(fn: Callable, describe: Callable[[BaseException], str], *args: object) -> tuple[str, object, float]:
    """One task, on a worker: its value, or its exception described there (tracebacks do not
    travel), with the seconds it took."""
    started = time.perf_counter()
    try:
        return "ok", fn(*args), time.perf_counter() - started
    except UserError as e:
        return "user", str(e), time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - this item fails, the others go on
        return "failed", describe(e), time.perf_counter() - started
