"""Shared fixtures: one local Ray cluster and one vLLM engine pool for the whole test run."""
from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster. 4 logical CPUs on 2 cores: the engine actor holds one while
    Ray Data and two Ray Train workers (0.5 CPU each) run beside it."""
    import ray

    if not ray.is_initialized():
        # Keep idle workers: Ray Data's shuffle tasks run in their own worker pool, which is
        # otherwise killed a second after each shuffle and restarted (seconds) by the next one.
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 _system_config={"idle_worker_killing_time_threshold_ms": 600_000})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def model_path():
    from pipelines.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def engine(ray_session, model_path):
    """The one real vLLM engine (SmolLM2-135M-Instruct, float32, CPU) shared by every e2e test."""
    from pipelines.config import EngineConfig
    from pipelines.llm import EnginePool

    pool = EnginePool(model_path, EngineConfig(max_model_len=2048, batch_size=32), seed=0)
    yield pool
    pool.shutdown()
