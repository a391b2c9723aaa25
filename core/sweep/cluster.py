"""Connecting to Ray: the optional dependency, a local cluster or an existing one, and what its nodes can hold.

`ray` is not needed to run the dashboard (`make run`); `make test` installs it from requirements-ray.txt. Without
it, asking for `--ray` is a UserError that says how to install it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from core.common.errors import UserError
from core.common.limits import format_bytes

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -c constraints.txt -r requirements-ray.txt (or `make setup-dev`, which `make test` runs)"
LOCAL = "local"
AUTO = "auto"
CORE_PACKAGE = Path(__file__).resolve().parents[1]


def require_ray() -> ModuleType:
    """The `ray` module, or a UserError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs the optional package ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class ClusterSettings:
    """Where the tasks run and what each one asks for.

    `address`: `local` starts a Ray instance on this machine (num_cpus CPUs, stopped at the end); `auto` joins the
    cluster this machine is part of (`ray start --head` / `ray start --address=…` ran before); anything else is a
    cluster address (`ray://head:10001` or `head:6379`). Per task: `cpus` and `gpus` (Ray's num_cpus/num_gpus),
    `memory_bytes` (None: each task's own estimate) and `retries` (a task whose worker or node dies is run again up
    to this many times; an exception in the task itself is retried only when it is a transient one)."""

    address: str = LOCAL
    cpus: float = 1.0
    gpus: float = 0.0
    memory_bytes: int | None = None
    retries: int = 3
    local_cpus: int | None = None

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0 or self.retries < 0:
            raise UserError("--ray-cpus must be above 0, --ray-gpus and --ray-retries at least 0")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise UserError("--ray-memory must be above 0")


def _init_arguments(settings: ClusterSettings) -> dict[str, Any]:
    """ray.init's arguments: a local instance sized by `local_cpus`; a remote cluster gets this package's code
    shipped with the job (runtime_env py_modules), so its nodes need only the same requirements installed."""
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if settings.address == LOCAL:
        cpus = settings.local_cpus or os.cpu_count() or 1
        return common | {"num_cpus": cpus, "num_gpus": _local_gpus()}
    env = {"py_modules": [str(CORE_PACKAGE)], "excludes": ["__pycache__"]}
    remote = {key: value for key, value in common.items() if key != "include_dashboard"}
    return remote | {"address": settings.address, "runtime_env": env}


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def connect(settings: ClusterSettings) -> Iterator[ModuleType]:
    """Ray, connected as `settings.address` says (an existing connection in this process is reused and left
    open); a connection made here is closed on exit."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(**_init_arguments(settings))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not connect to the Ray cluster at {settings.address!r}: {first}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def largest_node(ray: ModuleType) -> dict[str, float]:
    """The most CPUs, GPUs and memory (bytes) any one live node offers (a task runs on one node)."""
    best = {"CPU": 0.0, "GPU": 0.0, "memory": 0.0}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        for name in best:
            best[name] = max(best[name], float(resources.get(name, 0.0)))
    return best


def check_fits(node: dict[str, float], label: str, cpus: float, gpus: float, memory: int) -> str | None:
    """Why the cluster's `largest_node` cannot run a task asking for this much (Ray would wait for such a node
    forever), or None."""
    if cpus > node["CPU"]:
        return f"{label} asks for {cpus:g} CPUs, but the largest node has {node['CPU']:g}"
    if gpus > node["GPU"]:
        return f"{label} asks for {gpus:g} GPUs, but the largest node has {node['GPU']:g} (see --ray-gpus)"
    if memory > node["memory"]:
        return (
            f"{label} needs about {format_bytes(memory)} of memory, but the largest node offers Ray "
            f"{format_bytes(node['memory'])} (see --ray-memory; docs/SCALING.md says how to size it)"
        )
    return None
