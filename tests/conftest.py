"""Shared test fixtures (CPU only)."""

import os

import pytest

# Keep CPU tests deterministic and avoid oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite is CPU-only: Triton kernels (tests/kernels) run in Triton's interpreter. It must be on before anything
# imports the kernels, since @triton.jit decides at decoration time.
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def megatron_single_process():
    """megatron-core parallel state for one process (TP = PP = DP = 1, gloo), CPU patches applied; torn down after
    the module so other test folders can set up their own."""
    from based_megatron.model.parallel import single_process_model_parallel

    with single_process_model_parallel():
        yield
