"""Running a sweep's tasks as Ray tasks: one remote call per task with its resource needs, retried when its worker
or node dies, each result stored by the task itself the moment it is done (core.sweep.store), and a rerun
skipping what is stored. Ray schedules; nothing here decides where or when a task runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.common.errors import UserError
from core.common.limits import is_out_of_memory
from core.sweep.cluster import ClusterSettings, check_fits, connect, largest_node
from core.sweep.progress import SweepProgress, TaskView
from core.sweep.store import TaskReporter, TaskStore

log = logging.getLogger(__name__)

# Exceptions raised inside a task that a second attempt may not meet (shared storage or the network stalling). A
# bad input (UserError) or a bug fails at once; a dead worker or node is retried whatever the exception list says.
RETRIED_EXCEPTIONS = [ConnectionError, TimeoutError]
POLL_S = 0.5

Work = Callable[[Any, Any, Callable[[float], None]], Any]  # (payload, shared, report(fraction)) → JSON-ready result


@dataclass(frozen=True)
class Task:
    """One unit of a sweep: `key` identifies its result (a hash of its inputs), `label` is what people read,
    `payload` goes to the work function, `memory` is its estimate in bytes (Ray's `memory` resource)."""

    key: str
    label: str
    payload: Any
    memory: int
    priority: int = 0  # lower first (the oracle of an evaluation, whose numbers the others' files need)


@dataclass
class Outcome:
    """A task's end: `done` here, `skipped` (its result was stored by an earlier run), or `failed`."""

    task: Task
    state: str
    result: Any = None
    seconds: float | None = None
    error: str | None = None


def describe_failures(failures: Sequence[tuple[str, str]]) -> str | None:
    """One message for the tasks that failed ((label, reason) each), or None when none did."""
    if not failures:
        return None
    lines = "; ".join(f"{label}: {reason}" for label, reason in failures)
    return f"{len(failures)} task(s) failed ({lines}); the others' results are written — fix and rerun"


def failure_message(exc: BaseException) -> str:
    """One line for a task's exception: ours whole, out of memory named, anything else with its type."""
    if isinstance(exc, UserError):
        return str(exc)
    if is_out_of_memory(exc):
        return "out of memory; give the tasks more memory (--ray-memory), a smaller batch or a smaller dtype"
    lines = str(exc).strip().splitlines()
    return f"unexpected {type(exc).__name__}: {lines[0][:500] if lines else ''}".rstrip(": ")


def execute(
    work: Work, key: str, label: str, payload: Any, shared: Any, store_root: str, threads: int = 1
) -> tuple[Any, float]:
    """The body of every Ray task (it runs on a worker): do the work, store the result atomically, return it."""
    import torch

    torch.set_num_threads(threads)  # the task's CPUs (Ray sets OMP_NUM_THREADS=1 in its workers)
    store = TaskStore(store_root)
    report = TaskReporter(store, key, label)
    began = time.perf_counter()
    try:
        result = work(payload, shared, report)
    except BaseException as exc:
        report.write("failed", report.fraction_done, failure_message(exc))
        raise
    seconds = time.perf_counter() - began
    store.write_result(key, label, result, seconds)
    report.write("done", 1.0)
    return result, seconds


def ray_failure(ray: Any, exc: BaseException, retries: int) -> str:
    """What went wrong in a task, as Ray reports it after its retries."""
    errors = ray.exceptions
    if isinstance(exc, errors.RayTaskError):
        cause = getattr(exc, "cause", None)
        return failure_message(cause) if cause is not None else str(exc).strip().splitlines()[-1]
    if isinstance(exc, errors.OutOfMemoryError):
        return "Ray stopped the task: its node ran out of memory; give the tasks more memory (--ray-memory)"
    if isinstance(exc, errors.WorkerCrashedError | errors.NodeDiedError | errors.LocalRayletDiedError):
        return f"its worker process died on each of {retries + 1} attempts (killed, out of memory, or node lost)"
    if isinstance(exc, errors.TaskCancelledError):
        return "cancelled"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def stored_outcomes(tasks: Sequence[Task], store: TaskStore) -> dict[str, Outcome]:
    """The tasks whose results an earlier run stored (a rerun does not compute them again)."""
    found = {}
    for task in tasks:
        record = store.result(task.key)
        if record is not None:
            found[task.key] = Outcome(task, "skipped", record["result"], record.get("seconds"))
    return found


def run_tasks(
    tasks: Sequence[Task],
    work: Work,
    shared: Any,
    out_dir: Path,
    cluster: ClusterSettings,
    command: str,
    on_outcome: Callable[[Outcome], None] = lambda outcome: None,
    show: bool = True,
    recompute: bool = False,
) -> list[Outcome]:
    """Run every task not already stored under `out_dir` (all of them with `recompute`) on Ray; `on_outcome` hears
    of each as it ends (stored ones first). Returns the outcomes in the tasks' order; a failed task does not stop
    the others."""
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        raise UserError("two tasks of this sweep compute the same thing; give each model or run once")
    store = TaskStore.beside(out_dir)
    progress = SweepProgress(command, Path(out_dir), [TaskView(t.label, t.key) for t in tasks], show=show)
    outcomes = {} if recompute else stored_outcomes(tasks, store)
    state = "interrupted"
    try:
        for outcome in outcomes.values():
            progress.settle(outcome.task.key, "skipped", outcome.seconds)
            on_outcome(outcome)
        pending = [task for task in tasks if task.key not in outcomes]
        if pending:
            _run_on_ray(pending, work, shared, store, cluster, progress, outcomes, on_outcome)
        state = "failed" if any(o.state == "failed" for o in outcomes.values()) else "finished"
    finally:
        progress.close(state)
    return [outcomes[key] for key in keys]


def _run_on_ray(
    pending: list[Task],
    work: Work,
    shared: Any,
    store: TaskStore,
    cluster: ClusterSettings,
    progress: SweepProgress,
    outcomes: dict[str, Outcome],
    on_outcome: Callable[[Outcome], None],
) -> None:
    def settle(outcome: Outcome) -> None:
        outcomes[outcome.task.key] = outcome
        progress.settle(outcome.task.key, outcome.state, outcome.seconds, outcome.error)
        on_outcome(outcome)

    with connect(cluster) as ray:
        remote = ray.remote(execute)
        shared_ref = ray.put(shared)
        running: dict[Any, Task] = {}
        threads = max(1, int(cluster.cpus))
        node = largest_node(ray)
        for task in sorted(pending, key=lambda t: t.priority):
            memory = cluster.memory_bytes or task.memory
            why = check_fits(node, task.label, cluster.cpus, cluster.gpus, memory)
            if why:
                settle(Outcome(task, "failed", error=why))
                continue
            options = {"num_cpus": cluster.cpus, "num_gpus": cluster.gpus, "memory": memory, "name": task.label,
                       "max_retries": cluster.retries, "retry_exceptions": RETRIED_EXCEPTIONS}  # fmt: skip
            arguments = (work, task.key, task.label, task.payload, shared_ref, str(store.root), threads)
            ref = remote.options(**options).remote(*arguments)
            running[ref] = task
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    settle(_collect(ray, ref, running.pop(ref), cluster.retries))
                progress.poll()
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            raise


def _collect(ray: Any, ref: Any, task: Task, retries: int) -> Outcome:
    try:
        result, seconds = ray.get(ref)
    except ray.exceptions.RayError as exc:
        return Outcome(task, "failed", error=ray_failure(ray, exc, retries))
    return Outcome(task, "done", result, seconds)
