"""The fused non-finite gradient check gives DeepSpeed's own answer, gradient lists with and without NaN / inf."""

from types import SimpleNamespace

import pytest
import torch
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

from based_megatron.training.deepspeed_compat import fuse_overflow_check


def gradients(bad=None):
    gen = torch.Generator().manual_seed(0)
    groups = {0: [torch.randn(7, 5, generator=gen), None, torch.randn(300, generator=gen)],
              1: [torch.randn(2, 3, 4, generator=gen).to(torch.bfloat16)], 2: []}
    if bad is not None:
        groups[1][0][1, 2, 3] = bad
    return groups


def zero_optimizer(averaged_gradients):
    """The attributes of DeepSpeedZeroOptimizer that its serial check reads, and that check."""
    optimizer = SimpleNamespace(bit16_groups=[[]] * len(averaged_gradients), averaged_gradients=averaged_gradients,
                                _has_inf_or_nan=DeepSpeedZeroOptimizer._has_inf_or_nan)
    optimizer.has_overflow_partitioned_grads_serial = (
        lambda: DeepSpeedZeroOptimizer.has_overflow_partitioned_grads_serial(optimizer))
    return optimizer


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
def test_fused_check_matches_deepspeeds_serial_check(bad):
    optimizer = zero_optimizer(gradients(bad))
    expected = optimizer.has_overflow_partitioned_grads_serial()
    assert fuse_overflow_check(optimizer)
    got = optimizer.has_overflow_partitioned_grads_serial()
    assert got.dtype == expected.dtype == torch.bool and got.shape == expected.shape == (1,)
    assert bool(got) == bool(expected) == (bad is not None)


def test_no_gradients_is_no_overflow():
    optimizer = zero_optimizer({0: [None], 1: []})
    assert fuse_overflow_check(optimizer) and not bool(optimizer.has_overflow_partitioned_grads_serial())


def test_other_optimizers_are_left_alone():
    assert not fuse_overflow_check(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
