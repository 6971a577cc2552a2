"""Model FLOPs per token, counted per layer kind (Based's mixers, not a transformer's), and the MFU peak.

One multiply-add = 2 FLOPs; element-wise ops, norms and softmax are not counted. Per token, forward pass
(d = hidden size, s = sequence length, V = padded vocab, n = SwiGLU inner size, H = heads, F = feature dim,
Fe = 1 + F + F^2 Taylor features, K = conv kernel, w = window):

  BaseConv (C)          in_proj 2*d*4d + depthwise conv 2*K*2d + out_proj 2*2d*d        = 12 d^2 + 4 K d
  linear attention (L)  q,k proj 2 * 2*d*H*F + v,out proj 2 * 2*d^2
                        + state update phi(k) v^T and readout phi(q)^T S: 2 * 2*Fe*d   = 4 d H F + 4 d^2 + 4 Fe d
  sliding window (S)    qkv 2*d*3d + out 2*d^2 + scores and values 2 * 2*d*k_avg        = 8 d^2 + 4 d k_avg(w)
  full attention (A)    same as S with w = s (causal)
  SwiGLU MLP            fc1 2*d*2n + fc2 2*n*d                                           = 6 d n
  LM head               2 d V

k_avg(w) = mean over positions i < s of min(i, w) + 1 = the keys each query actually scores (causal, window w).
Training FLOPs = 3 x forward (backward = 2 x forward), 4 x with full activation recomputation.
"""

import time

import torch


def attended_keys(seq_length, window):
    """Mean number of keys per query for causal attention that sees keys i-window .. i."""
    w = min(window, seq_length - 1)
    # positions 0..w-1 see i+1 keys, the remaining s-w see w+1
    return (w * (w + 1) / 2 + (seq_length - w) * (w + 1)) / seq_length


def mixer_flops_per_token(kind, d, seq_length, *, heads, feature_dim, conv_kernel, window):
    if kind == "C":
        return 12 * d * d + 4 * conv_kernel * d
    if kind == "L":
        taylor_features = 1 + feature_dim + feature_dim * feature_dim
        return 4 * d * heads * feature_dim + 4 * d * d + 4 * taylor_features * d
    if kind == "S":
        return 8 * d * d + 4 * d * attended_keys(seq_length, window)
    if kind == "A":
        return 8 * d * d + 4 * d * attended_keys(seq_length, seq_length)
    raise ValueError(f"unknown layer kind {kind!r} (expected one of C, L, S, A)")


def forward_flops_per_token(layer_kinds, *, hidden_size, ffn_hidden_size, vocab_size, seq_length, heads,
                            feature_dim, conv_kernel, window):
    """Forward FLOPs per token of the whole model; `layer_kinds` is e.g. 'CLSCC...' (one symbol per layer)."""
    d = hidden_size
    mixers = sum(mixer_flops_per_token(kind, d, seq_length, heads=heads, feature_dim=feature_dim,
                                       conv_kernel=conv_kernel, window=window) for kind in layer_kinds)
    mlps = len(layer_kinds) * 6 * d * ffn_hidden_size
    return mixers + mlps + 2 * d * vocab_size


def training_flops_per_token(forward_flops, recompute=False):
    return (4 if recompute else 3) * forward_flops


# Dense peak TFLOP/s by (device-name fragment, dtype); the first matching fragment wins.
_GPU_PEAK_TFLOPS = [
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp32": 31.2}),
]


def peak_tflops(bf16, override=None):
    """The per-device peak MFU is measured against, and a short description of where it comes from."""
    if override is not None:
        return override, f"--peak-tflops {override:g}"
    dtype = "bf16" if bf16 else "fp32"
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for fragment, peaks in _GPU_PEAK_TFLOPS:
            if fragment in name:
                return peaks[dtype], f"{name} dense {dtype} datasheet peak"
    measured = measure_matmul_tflops(torch.bfloat16 if bf16 else torch.float32)
    return measured, f"measured {dtype} matmul peak of this device"


def measure_matmul_tflops(dtype, size=1024, repeats=5):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.matmul(a, b)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return 2 * size**3 / seconds / 1e12
