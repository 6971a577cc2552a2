"""Multi-process equivalence checks for based-tiny, run by test_parallel.py as ONE torchrun launch (4 ranks, gloo).

1. Reference: TP=1, PP=1; loss per microbatch, full weights and full gradients.
2. TP=2, TP=2+SP, PP=2 (1F1B), PP=2 with uneven '|' stages, TP=2 x PP=2: load the reference weights into the shards, run megatron-core's
   forward_backward schedule on the same microbatches, compare losses and every gradient shard (fp32, rel 1e-5).
3. dist_checkpointing: save at TP=2 x PP=2, load at TP=1 x PP=1 and at PP=2, compare forward losses.

Prints "CASE <name> OK" per passed case; any mismatch raises (non-zero exit).
Usage: torchrun --nproc-per-node 4 parallel_worker.py CHECKPOINT_DIR
"""

import sys

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from based_megatron import megatron_cpu_compat
from based_megatron.config import build_config
from based_megatron.model import build_model
from based_megatron.model.grads import sync_model_parallel_grads
from based_megatron.model.state_dict import full_state_dict, load_full_state_dict, local_shards

SEQ_LENGTH, MICRO_BATCH, NUM_MICROBATCHES = 64, 2, 4
RTOL = 1e-5
LAYOUTS = {  # name: (tensor parallel, pipeline parallel, sequence parallel, layer pattern)
    "tp2": (2, 1, False, "CLSA"),
    "tp2_sp": (2, 1, True, "CLSA"),
    "pp2": (1, 2, False, "CLSA"),
    "pp2_uneven_stages": (1, 2, False, "C|LSA"),
    "tp2_pp2": (2, 2, False, "CLSA"),
}


def setup_layout(tp: int, pp: int, seed: int, sequence_parallel: bool = False, layer_pattern: str = "CLSA"):
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    config = build_config("based-tiny", seq_length=SEQ_LENGTH, tensor_model_parallel_size=tp,
                          pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel,
                          layer_pattern=layer_pattern)
    return config, build_model(config)


def microbatches(vocab_size: int):
    generator = torch.Generator().manual_seed(2024)
    tokens = torch.randint(0, vocab_size, (NUM_MICROBATCHES, MICRO_BATCH, SEQ_LENGTH + 1), generator=generator)
    return [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]


def forward_step(data_iterator, model):
    tokens, labels = next(data_iterator)
    per_token_loss = model(tokens, None, None, labels=labels)

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach()}

    return per_token_loss, loss_func


def run_schedule(model, config, forward_only: bool):
    model.zero_grad(set_to_none=True)
    results = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(microbatches(config.vocab_size)), model=[model],
        num_microbatches=NUM_MICROBATCHES, seq_length=SEQ_LENGTH, micro_batch_size=MICRO_BATCH,
        forward_only=forward_only,
    )
    if not forward_only:
        sync_model_parallel_grads(model)
    if parallel_state.is_pipeline_last_stage():
        return torch.stack([r["loss"] for r in results])
    return None


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor):
    atol = RTOL * max(expected.abs().max().item(), 1e-12)
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{name}: {m}")


def check_losses(case: str, losses, reference_losses):
    if losses is not None:
        assert_close(f"{case} losses", losses, reference_losses)


def check_grads(case: str, model, reference_grads):
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    missing = [n for n, p in model.named_parameters() if id(p) not in with_grad]
    assert not missing, f"{case}: parameters without gradient: {missing}"
    checked = 0
    for key, slices, grad, _ in local_shards(model, grads=True):
        assert_close(f"{case} grad {key}{slices}", grad, reference_grads[key][slices])
        checked += 1
    assert checked, f"{case}: no gradient shards compared"


def report(case: str):
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"CASE {case} OK", flush=True)


def main(checkpoint_dir: str):
    dist.init_process_group("gloo")
    megatron_cpu_compat.apply()

    config, model = setup_layout(1, 1, seed=1)
    reference_losses = run_schedule(model, config, forward_only=False)
    reference_weights = full_state_dict(model)
    reference_grads = full_state_dict(model, grads=True)
    report("reference")

    for case, (tp, pp, sp, pattern) in LAYOUTS.items():
        config, model = setup_layout(tp, pp, seed=100 + tp * 10 + pp, sequence_parallel=sp, layer_pattern=pattern)
        load_full_state_dict(model, reference_weights)
        losses = run_schedule(model, config, forward_only=False)
        check_losses(case, losses, reference_losses)
        check_grads(case, model, reference_grads)
        report(case)

    # the last case, TP2 x PP2, holds the reference weights
    dist_checkpointing.save(model.sharded_state_dict(), checkpoint_dir)
    report("checkpoint_save_tp2_pp2")
    for case, (tp, pp) in {"checkpoint_load_tp1_pp1": (1, 1), "checkpoint_load_pp2": (1, 2)}.items():
        config, model = setup_layout(tp, pp, seed=7)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), checkpoint_dir))
        losses = run_schedule(model, config, forward_only=True)
        check_losses(case, losses, reference_losses)
        report(case)

    if dist.get_rank() == 0:
        print("ALL CASES PASSED", flush=True)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    main(sys.argv[1])
