"""Check an HF export against the training-side model: same tokens, fp32 logits within a relative tolerance."""

import torch

VERIFY_RTOL = 1e-4


class VerificationError(RuntimeError):
    pass


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-30)).item()


def verification_tokens(vocab_size: int, seq_length: int, batch: int = 2, seed: int = 1234) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=generator)


@torch.no_grad()
def training_model_logits(config, state: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, vocab] of the megatron-core BasedModel (TP = PP = 1, fp32, CPU) holding `state`."""
    import dataclasses

    from based_megatron.model import build_model
    from based_megatron.model.parallel import single_process_model_parallel
    from based_megatron.model.state_dict import load_full_state_dict

    single = dataclasses.replace(config, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                                 sequence_parallel=False, params_dtype=torch.float32, bf16=False, fp16=False,
                                 pipeline_dtype=torch.float32, pipeline_model_parallel_layout=None)
    with single_process_model_parallel():
        model = build_model(single, pre_process=True, post_process=True).eval()
        load_full_state_dict(model, {k: v.float() for k, v in state.items()})
        logits = model(tokens, None, None)
    return logits[..., : config.vocab_size].float()


@torch.no_grad()
def hf_model_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    return model.float()(tokens, use_cache=False).logits.float()


def check_logits(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float = VERIFY_RTOL) -> float:
    if actual.shape != expected.shape:
        raise VerificationError(f"{name}: logits shape {tuple(actual.shape)} != training model {tuple(expected.shape)}")
    difference = relative_difference(actual, expected)
    if not difference <= rtol:
        raise VerificationError(f"{name}: fp32 logits differ from the training model by {difference:.3e} "
                                f"(relative, max-abs), more than {rtol:.0e}")
    return difference
