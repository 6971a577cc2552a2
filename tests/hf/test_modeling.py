"""BasedForCausalLM: recurrent cache == parallel forward, generate, left padding, constant memory."""

import pytest
import torch

from based_megatron.hf.modeling_based import BasedCache, BasedForCausalLM
from tests.hf.conftest import tiny_hf_config

PAD = 60  # never drawn in the prompts below (ids < 60)


def prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 60, (n,), generator=g) for n in lengths]


def left_pad(seqs):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def test_recurrent_decode_matches_parallel_forward(tiny_model, small_chunks):
    ids = torch.stack(prompts([23, 23]))
    full = tiny_model(ids, use_cache=False).logits
    out = tiny_model(ids[:, :11])  # prefill (several blocks) ...
    logits = [out.logits]
    for t in range(11, 19):  # ... one-token recurrent steps ...
        logits.append(tiny_model(ids[:, t:t + 1], cache=out.cache).logits)
    logits.append(tiny_model(ids[:, 19:], cache=out.cache).logits)  # ... and a multi-token continuation
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-5, atol=1e-5)
    assert out.cache.get_seq_length() == 23


@torch.no_grad()
def test_greedy_generate_equals_argmax_of_full_recomputation(tiny_model):
    ids = torch.stack(prompts([7]))
    generated = tiny_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                    pad_token_id=PAD)
    for step in range(ids.shape[1], generated.shape[1]):
        logits = tiny_model(generated[:, :step], use_cache=False).logits
        assert generated[0, step].item() == logits[0, -1].argmax().item(), f"step {step}"


@torch.no_grad()
def test_left_padded_batch_generates_like_each_prompt_alone(tiny_model, small_chunks):
    seqs = prompts([3, 9, 14])
    ids, mask = left_pad(seqs)
    batched = tiny_model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD)
    padded_logits = tiny_model(ids, attention_mask=mask, use_cache=False).logits
    for row, s in enumerate(seqs):
        alone = tiny_model.generate(s[None], attention_mask=torch.ones(1, len(s), dtype=torch.long),
                                    max_new_tokens=10, do_sample=False, pad_token_id=PAD)
        assert batched[row, ids.shape[1]:].tolist() == alone[0, len(s):].tolist(), f"prompt {row}"
        alone_logits = tiny_model(s[None], use_cache=False).logits
        torch.testing.assert_close(padded_logits[row, ids.shape[1] - len(s):], alone_logits[0], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cache_memory_is_constant_in_generated_length():
    torch.manual_seed(0)
    model = BasedForCausalLM(tiny_hf_config(attn_layers=[])).eval()  # no growing full-attention layer
    ids = torch.stack(prompts([6]))
    sizes = []
    for new_tokens in (5, 40):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=PAD, return_dict_in_generate=True)
        assert isinstance(out.cache, BasedCache)
        sizes.append(out.cache.nbytes())
    assert sizes[0] == sizes[1]
    config = model.config  # S and z: 1 + F + F^2 features per head, fp32
    la_state = out.cache.layers[1]
    assert tuple(la_state.S.shape) == (1, 4, 1 + 4 + 16, config.n_embd // 4) and la_state.S.dtype == torch.float32
    assert tuple(out.cache.layers[2].keys.shape[2:]) == (config.sliding_window_lookback, config.n_embd // 4)
    assert tuple(out.cache.layers[0].conv.shape) == (1, config.conv_channels, config.conv_kernel_size - 1)


@torch.no_grad()
def test_based_kernels_path_matches_plain_pytorch(tiny_model):
    """kernel_backend='based_kernels' drives the based_kernels API (its CPU references here)."""
    pytest.importorskip("based_kernels")
    fused = BasedForCausalLM(tiny_hf_config(kernel_backend="based_kernels")).eval()
    fused.load_state_dict(tiny_model.state_dict())
    ids = torch.stack(prompts([17, 17]))
    reference = tiny_model(ids, use_cache=False).logits
    out = fused(ids[:, :9])
    logits = [out.logits] + [fused(ids[:, t:t + 1], cache=out.cache).logits for t in range(9, 17)]
    torch.testing.assert_close(fused(ids, use_cache=False).logits, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(logits, 1), reference, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_beam_search_reorders_the_cache(tiny_model):
    ids = torch.stack(prompts([5]))
    out = tiny_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, num_beams=3,
                              do_sample=False, pad_token_id=PAD)
    assert out.shape == (1, 11)


def test_loss_and_padded_vocab(tiny_model):
    ids = torch.stack(prompts([12]))
    out = tiny_model(ids, labels=ids, use_cache=False)
    assert out.logits.shape[-1] == 61 and tiny_model.lm_head.weight.shape[0] == 64
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.transformer.embeddings.word_embeddings.weight.data_ptr()
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, expected)


def test_config_rejects_bad_layer_lists():
    with pytest.raises(ValueError, match="more than once"):
        tiny_hf_config(alt_mixer_layers=[1, 2])
    with pytest.raises(ValueError, match="outside"):
        tiny_hf_config(attn_layers=[7])
