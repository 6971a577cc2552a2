"""Test-only fault injection for the launcher-level tests (put this directory on PYTHONPATH; inert otherwise).

BASED_TEST_SIGTERM_AT_STEP=N      the rank sends itself SIGTERM in its N-th call of an optimizer's step
                                  (ZeRO calls it once at start-up to create the optimizer states)
BASED_TEST_KILL_DURING_SAVE=TAG   the rank SIGKILLs itself while saving checkpoint TAG: after DeepSpeed wrote the
                                  model states, before the optimizer states, the RNG files and `latest`
"""

import os
import signal


def _sigterm_at_step(step):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] == step:
            os.kill(os.getpid(), signal.SIGTERM)

    register_optimizer_step_pre_hook(hook)


def _kill_during_save(tag):
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine._save_zero_checkpoint

    def save_zero_checkpoint(self, save_path, ckpt_tag):
        if str(ckpt_tag) == tag:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, save_path, ckpt_tag)

    DeepSpeedEngine._save_zero_checkpoint = save_zero_checkpoint


if os.environ.get("BASED_TEST_SIGTERM_AT_STEP"):
    _sigterm_at_step(int(os.environ["BASED_TEST_SIGTERM_AT_STEP"]))
if os.environ.get("BASED_TEST_KILL_DURING_SAVE"):
    _kill_during_save(os.environ["BASED_TEST_KILL_DURING_SAVE"])
