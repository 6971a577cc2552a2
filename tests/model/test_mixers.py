"""Each Based mixer against its own plain re-derivation (fp64, forward and every gradient), causality of the
whole model, packed documents in linear attention, and the mixers' errors for inputs they do not handle."""

import math

import pytest
import torch
import torch.nn.functional as F

from based_megatron.config import build_config
from based_megatron.model import build_model
from based_megatron.model.mixers import BaseConv, LinearAttention, SlidingWindowAttention

SEQ, BATCH = 40, 2


@pytest.fixture
def config(megatron_single_process):
    return build_config("based-tiny", params_dtype=torch.float64, seq_length=SEQ, swa_window=8,
                        use_cpu_initialization=True)


def make_input(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SEQ, BATCH, config.hidden_size, dtype=torch.float64, generator=generator).requires_grad_()


def randomize(module, seed=1):
    """Non-trivial values everywhere (biases too), so every parameter's gradient is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, dtype=param.dtype, generator=generator) * 0.3)


def check_against(module, reference, x, **forward_kwargs):
    out, bias = module(x, None, **forward_kwargs)
    if bias is not None:
        out = out + bias
    expected = reference(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    probe = torch.randn_like(out)
    params = [x] + list(module.parameters())
    grads = torch.autograd.grad((out * probe).sum(), params)
    expected_grads = torch.autograd.grad((expected * probe).sum(), params)
    for (name, _), grad, expected_grad in zip([("x", x)] + list(module.named_parameters()), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {name}: {m}")


# --- BaseConv: y = silu(sum_j w[:, j] u_{t-K+1+j} + b) * g ---------------------------------------------------------

def base_conv_reference(m: BaseConv):
    def forward(x):
        u = x @ m.in_proj_u.weight.T + m.in_proj_u.bias
        g = x @ m.in_proj_g.weight.T + m.in_proj_g.bias
        kernel = m.conv_weight.shape[1]
        conv = m.conv_bias.expand_as(u)
        for j in range(kernel):           # tap j looks back kernel-1-j steps
            shift = kernel - 1 - j
            shifted = torch.cat([torch.zeros_like(u[:shift]), u[: u.shape[0] - shift]])
            conv = conv + m.conv_weight[:, j] * shifted
        return (F.silu(conv) * g) @ m.out_proj.weight.T + m.out_proj.bias
    return forward


def test_base_conv_matches_reference(config):
    mixer = BaseConv(config, layer_number=1)
    randomize(mixer)
    check_against(mixer, base_conv_reference(mixer), make_input(config))


# --- Linear attention: explicit recurrence over phi features ------------------------------------------------------

def taylor_phi(x):
    f = x.shape[-1]
    outer = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, outer / (math.sqrt(2) * math.sqrt(f))], dim=-1)


def linear_attention_reference(m: LinearAttention, eps: float):
    heads = m.local_heads

    def forward(x):
        s, b, _ = x.shape
        q = (x @ m.proj_q.weight.T).view(s, b, heads, -1)
        k = (x @ m.proj_k.weight.T).view(s, b, heads, -1)
        v = (x @ m.proj_v.weight.T).view(s, b, heads, -1)
        pq, pk = taylor_phi(q), taylor_phi(k)                       # [s, b, H, 1+F+F^2]
        state = torch.zeros(b, heads, pk.shape[-1], v.shape[-1], dtype=x.dtype)
        normaliser = torch.zeros(b, heads, pk.shape[-1], dtype=x.dtype)
        outputs = []
        for t in range(s):
            state = state + pk[t].unsqueeze(-1) * v[t].unsqueeze(-2)
            normaliser = normaliser + pk[t]
            numerator = torch.einsum("bhm,bhmd->bhd", pq[t], state)
            denominator = torch.einsum("bhm,bhm->bh", pq[t], normaliser).unsqueeze(-1) + eps
            outputs.append((numerator / denominator).reshape(b, -1))
        return torch.stack(outputs) @ m.out_proj.weight.T
    return forward


def test_taylor_feature_map_kernel_identity():
    q, k = torch.randn(5, 16, dtype=torch.float64), torch.randn(5, 16, dtype=torch.float64)
    dot = (q * k).sum(-1)
    torch.testing.assert_close((taylor_phi(q) * taylor_phi(k)).sum(-1), 1 + dot / 4 + dot ** 2 / 32)


def test_linear_attention_matches_recurrence(config):
    mixer = LinearAttention(config, layer_number=2)
    randomize(mixer)
    check_against(mixer, linear_attention_reference(mixer, config.la_eps), make_input(config))


def test_linear_attention_packed_documents_reset_state(config):
    from megatron.core.packed_seq_params import PackedSeqParams

    mixer = LinearAttention(config, layer_number=2)
    x = make_input(config)[:, :1].detach()                           # packed layout: [t, 1, h]
    cu_seqlens = torch.tensor([0, 15, SEQ], dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens)
    out, _ = mixer(x, None, packed_seq_params=packed)
    separate = torch.cat([mixer(x[:15], None)[0], mixer(x[15:], None)[0]])
    torch.testing.assert_close(out, separate)


# --- Sliding window: explicit masked softmax with rotate-half rotary ------------------------------------------------

def rotary_freqs(seq, dim, base):
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float64), inv_freq)
    return torch.cat([angles, angles], dim=-1)                      # [s, dim]


def rotate(x, angles):
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * angles.cos() + rotated_half * angles.sin()


def sliding_window_reference(m: SlidingWindowAttention, window: int, base: int):
    heads = m.local_heads

    def forward(x):
        s, b, d = x.shape
        qkv = (x @ m.linear_qkv.weight.T).view(s, b, heads, 3, -1)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        angles = rotary_freqs(s, q.shape[-1], base)[:, None, None, :]
        q, k = rotate(q, angles), rotate(k, angles)
        scores = torch.einsum("ibhd,jbhd->bhij", q, k) / math.sqrt(q.shape[-1])
        i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
        scores = scores.masked_fill(~((j <= i) & (j >= i - window)), float("-inf"))
        o = torch.einsum("bhij,jbhd->ibhd", scores.softmax(-1), v).reshape(s, b, d)
        return o @ m.linear_proj.weight.T
    return forward


def test_sliding_window_matches_masked_softmax(config):
    mixer = SlidingWindowAttention(config, layer_number=3)
    randomize(mixer)
    freqs = rotary_freqs(SEQ, config.swa_head_dim, config.rotary_base)[:, None, None, :]
    check_against(mixer, sliding_window_reference(mixer, config.swa_window, config.rotary_base),
                  make_input(config), rotary_pos_emb=freqs)


# --- Inputs a mixer does not handle ------------------------------------------------------------------------------

def test_unsupported_inputs_raise_clear_errors(config):
    from megatron.core.packed_seq_params import PackedSeqParams

    x = make_input(config)
    cu = torch.tensor([0, SEQ], dtype=torch.int32)
    packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu)
    with pytest.raises(NotImplementedError, match=r"BaseConv \(layer 1\): packed sequences"):
        BaseConv(config, layer_number=1)(x, None, packed_seq_params=packed)
    with pytest.raises(ValueError, match=r"SlidingWindowAttention \(layer 3\) needs rotary_pos_emb"):
        SlidingWindowAttention(config, layer_number=3)(x, None)
    with pytest.raises(NotImplementedError, match="inference_context is not supported"):
        LinearAttention(config, layer_number=2)(x, None, inference_context=object())


# --- The whole model --------------------------------------------------------------------------------------------

def test_model_layers_and_parameter_names(megatron_single_process):
    model = build_model(build_config("based-tiny"))
    kinds = [type(layer.self_attention).__name__ for layer in model.decoder.layers]
    assert kinds == ["BaseConv", "LinearAttention", "SlidingWindowAttention", "SelfAttention"]
    names = {n for n, _ in model.named_parameters()}
    for expected in ["embedding.word_embeddings.weight", "decoder.final_layernorm.weight",
                     "decoder.layers.0.self_attention.in_proj_u.weight", "decoder.layers.0.self_attention.conv_weight",
                     "decoder.layers.1.self_attention.proj_q.weight", "decoder.layers.2.self_attention.linear_qkv.weight",
                     "decoder.layers.3.self_attention.linear_qkv.weight", "decoder.layers.0.mlp.linear_fc1.weight"]:
        assert expected in names
    assert "output_layer.weight" not in names                       # tied to the embedding


def test_model_is_causal(megatron_single_process):
    config = build_config("based-tiny", seq_length=SEQ, swa_window=8)
    model = build_model(config).eval()
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone()
    position = 25
    changed[:, position] = (changed[:, position] + 1) % config.vocab_size
    with torch.no_grad():
        logits, logits_changed = model(tokens, None, None), model(changed, None, None)
    torch.testing.assert_close(logits[:, :position], logits_changed[:, :position], rtol=0, atol=1e-6)
    assert (logits[:, position:] - logits_changed[:, position:]).abs().amax(-1).min() > 0


def test_model_rotary_is_rotate_half_with_rotary_base(megatron_single_process):
    config = build_config("based-tiny", seq_length=SEQ, swa_window=8)
    model = build_model(config)
    freqs = model.rotary_pos_emb(SEQ)                               # what GPTModel hands every layer
    torch.testing.assert_close(freqs.squeeze(1).squeeze(1).double(),
                               rotary_freqs(SEQ, config.swa_head_dim, config.rotary_base))


def test_activation_recompute_gives_the_same_loss_and_grads(megatron_single_process):
    tokens = torch.randint(0, 260, (BATCH, SEQ), generator=torch.Generator().manual_seed(4))
    results = []
    for recompute in [{}, dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)]:
        torch.manual_seed(0)
        model = build_model(build_config("based-tiny", seq_length=SEQ, swa_window=8, **recompute))
        loss = model(tokens, None, None, labels=tokens).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss, grads), (loss_recompute, grads_recompute) = results
    torch.testing.assert_close(loss_recompute, loss, rtol=0, atol=0)
    for grad, grad_recompute in zip(grads, grads_recompute):
        torch.testing.assert_close(grad_recompute, grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rms_norm_is_the_fp32_formula(megatron_single_process, dtype):
    """torch's rms_norm (fused on CUDA) against x / sqrt(mean(x^2) + eps) * weight in fp32, forward and gradients."""
    from based_megatron.model.norms import RMSNorm

    norm = RMSNorm(build_config("based-tiny", params_dtype=dtype, use_cpu_initialization=True), 48, eps=1e-5)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=generator))
    x = torch.randn(5, 2, 48, generator=generator).to(dtype).requires_grad_()
    x64, w64 = x.detach().double().requires_grad_(), norm.weight.detach().double().requires_grad_()
    expected = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * w64
    y = norm(x)
    assert y.dtype == dtype
    grad = torch.randn(y.shape, generator=generator).to(dtype)
    got = torch.autograd.grad(y, (x, norm.weight), grad)
    want = torch.autograd.grad(expected, (x64, w64), grad.double())
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    for a, b in zip((y, *got), (expected, *want)):
        assert ((a.double() - b).norm() / b.norm()).item() <= tol
