"""Shared test fixtures (CPU only)."""

import os

import pytest

# Keep CPU tests deterministic and avoid oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def megatron_single_process():
    """megatron-core parallel state for one process (TP = PP = DP = 1, gloo), CPU patches applied."""
    from based_megatron.model.parallel import single_process_model_parallel

    with single_process_model_parallel():
        yield
