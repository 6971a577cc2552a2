"""Shared fixtures for the training tests: one single-process gloo world (megatron-core parallel_state) per
session for in-process tests, and the sample corpus built once."""

import os
import signal

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session", autouse=True)
def no_leaked_shared_memory():
    """DeepSpeed's CPU shm all-reduce leaves 66 MB /dev/shm files per rank; training must keep off that path."""
    def deepspeed_files():
        return {n for n in os.listdir("/dev/shm") if n.startswith("deepspeed")} if os.path.isdir("/dev/shm") else set()

    before = deepspeed_files()
    yield
    leaked = deepspeed_files() - before
    assert not leaked, f"DeepSpeed left shared-memory files behind: {sorted(leaked)}"


@pytest.fixture(scope="session")
def single_process_world():
    from based_megatron.training import distributed

    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        os.environ[key] = value
    os.environ["MASTER_PORT"] = str(distributed._free_port())
    distributed.initialize_distributed(1, 1, seed=1234)
    yield
    distributed.destroy()


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """Prefix of the byte-tokenized sample corpus (built once per session)."""
    from based_megatron.data.sample_corpus import ensure_sample_dataset

    return ensure_sample_dataset(str(tmp_path_factory.mktemp("sample_data")))


@pytest.fixture
def restore_signals():
    """The trainer installs SIGTERM/SIGINT handlers (save and stop); put the test process's back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
