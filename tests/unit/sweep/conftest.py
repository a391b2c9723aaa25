"""A local Ray instance for each sweep test module (started once per module, stopped after it, so no Ray process
outlives the module): two CPUs, no dashboard (the machine is shared with other jobs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sweep_faults


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sweep_faults)  # the workers need not find the tests' folder
    yield ray
    ray.shutdown()
