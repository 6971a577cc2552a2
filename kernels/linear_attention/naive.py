"""Plain-PyTorch Taylor linear attention: the CPU path and the oracle for the fused kernels.

Feature map on each F-dim query/key (F = 16 in Based):
    phi(x) = [1, x / F**(1/4), vec(x x^T) / (sqrt(2) * sqrt(F))]          (1 + F + F*F features)
so that phi(q).phi(k) = 1 + (q.k)/sqrt(F) + (q.k)^2 / (2F) > 0.
Causal output:  o_i = sum_{j<=i} (phi(q_i).phi(k_j)) v_j / (sum_{j<=i} phi(q_i).phi(k_j) + eps)
State after a prefix: S = sum_j phi(k_j) v_j^T  [1+F+F*F, D],  z = sum_j phi(k_j)  [1+F+F*F].

Three independent formulations (quadratic, chunked, recurrent) check each other; all take [B, T, H, *] tensors and
compute in fp32 (fp64 stays fp64).
"""

import math
from typing import Optional, Tuple

import torch

State = Tuple[torch.Tensor, torch.Tensor]


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """[..., F] -> [..., 1 + F + F*F]."""
    f = x.shape[-1]
    ones = torch.ones_like(x[..., :1])
    linear = x / f**0.25
    quadratic = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2 * f)
    return torch.cat([ones, linear, quadratic], dim=-1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads_first(*tensors: torch.Tensor) -> list:
    """[B, T, H, X] -> [B, H, T, X] in the compute dtype."""
    dtype = _compute_dtype(tensors[0])
    return [t.transpose(1, 2).to(dtype) for t in tensors]


def linear_attention_quadratic(q, k, v, eps: float = 1e-12) -> torch.Tensor:
    """O(T^2) form: A_ij = 1 + s/sqrt(F) + s^2/(2F) with s = q_i.k_j, causal, normalised by row sums."""
    qh, kh, vh = _heads_first(q, k, v)
    f = q.shape[-1]
    s = qh @ kh.transpose(-1, -2)
    a = 1 + s / math.sqrt(f) + s.square() / (2 * f)
    t = q.shape[1]
    a = a.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=q.device).tril(), 0)
    o = (a @ vh) / (a.sum(-1, keepdim=True) + eps)
    return o.transpose(1, 2).to(v.dtype)


def linear_attention_recurrent(q, k, v, eps: float = 1e-12, initial_state: Optional[State] = None,
                               output_final_state: bool = False):
    """Token-by-token recurrence on the explicit 273-feature state (the generation path)."""
    b, t, h, _ = q.shape
    S, z = _init_state(q, v, b, initial_state)
    outputs = []
    for i in range(t):
        outputs.append(linear_attention_step(q[:, i], k[:, i], v[:, i], S, z, eps=eps))
    o = torch.stack(outputs, dim=1) if t else v.new_empty(v.shape)
    return (o, (S, z)) if output_final_state else o


def linear_attention_step(q, k, v, S: torch.Tensor, z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """One new token per sequence: q, k [B, H, F], v [B, H, D]; S [B, H, M, D], z [B, H, M] updated in place."""
    phi_q = taylor_feature_map(q.to(S.dtype))
    phi_k = taylor_feature_map(k.to(S.dtype))
    S.add_(phi_k.unsqueeze(-1) * v.to(S.dtype).unsqueeze(-2))
    z.add_(phi_k)
    num = torch.einsum("bhm,bhmd->bhd", phi_q, S)
    den = torch.einsum("bhm,bhm->bh", phi_q, z).unsqueeze(-1)
    return (num / (den + eps)).to(v.dtype)


def linear_attention_chunked(q, k, v, eps: float = 1e-12, chunk_size: int = 64,
                             initial_state: Optional[State] = None, output_final_state: bool = False):
    """Linear-time form: quadratic inside each chunk, the 273 x D state carried between chunks."""
    b, t, h, f = q.shape
    S, z = _init_state(q, v, b, initial_state)
    qh, kh, vh = _heads_first(q, k, v)
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    outputs = []
    for start in range(0, t, chunk_size):
        qc, kc, vc = (x[:, :, start:start + chunk_size] for x in (qh, kh, vh))
        c = qc.shape[2]
        s = qc @ kc.transpose(-1, -2)
        a = (1 + s / math.sqrt(f) + s.square() / (2 * f)).masked_fill(~causal[:c, :c], 0)
        phi_q, phi_k = taylor_feature_map(qc), taylor_feature_map(kc)
        num = a @ vc + phi_q @ S
        den = a.sum(-1) + (phi_q @ z.unsqueeze(-1)).squeeze(-1)
        outputs.append(num / (den.unsqueeze(-1) + eps))
        S = S + phi_k.transpose(-1, -2) @ vc
        z = z + phi_k.sum(2)
    o = torch.cat(outputs, dim=2).transpose(1, 2).to(v.dtype) if t else v.new_empty(v.shape)
    return (o, (S, z)) if output_final_state else o


def linear_attention_varlen(q, k, v, cu_seqlens: torch.Tensor, eps: float = 1e-12,
                            initial_state: Optional[State] = None, output_final_state: bool = False,
                            chunk_size: int = 64):
    """Packed documents (B == 1): each segment cu_seqlens[n]:cu_seqlens[n+1] starts from its own state."""
    if q.shape[0] != 1:
        raise ValueError(f"cu_seqlens needs packed inputs with batch 1, got batch {q.shape[0]}")
    bounds = cu_seqlens.tolist()
    outputs, states_S, states_z = [], [], []
    for n, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        state_n = None if initial_state is None else (initial_state[0][n:n + 1], initial_state[1][n:n + 1])
        o, (S, z) = linear_attention_chunked(q[:, start:end], k[:, start:end], v[:, start:end], eps=eps,
                                             chunk_size=chunk_size, initial_state=state_n, output_final_state=True)
        outputs.append(o)
        states_S.append(S)
        states_z.append(z)
    o = torch.cat(outputs, dim=1)
    return (o, (torch.cat(states_S), torch.cat(states_z))) if output_final_state else o


def linear_attention_reference(q, k, v, *, eps: float = 1e-12, cu_seqlens=None, initial_state=None,
                               output_final_state: bool = False):
    """The reference behind based_kernels.linear_attention (same signature)."""
    if cu_seqlens is not None:
        return linear_attention_varlen(q, k, v, cu_seqlens, eps=eps, initial_state=initial_state,
                                       output_final_state=output_final_state)
    return linear_attention_chunked(q, k, v, eps=eps, initial_state=initial_state,
                                    output_final_state=output_final_state)


def _init_state(q, v, batch: int, initial_state: Optional[State]) -> State:
    h, f, d = q.shape[2], q.shape[3], v.shape[3]
    m = 1 + f + f * f
    dtype = _compute_dtype(q)
    if initial_state is None:
        return (torch.zeros(batch, h, m, d, dtype=dtype, device=q.device),
                torch.zeros(batch, h, m, dtype=dtype, device=q.device))
    S, z = initial_state
    if S.shape[1:] != (h, m, d) or z.shape[1:] != (h, m):
        raise ValueError(f"initial_state shapes {tuple(S.shape)}, {tuple(z.shape)}: expected "
                         f"[N, {h}, {m}, {d}] and [N, {h}, {m}]")
    return S.to(dtype).clone(), z.to(dtype).clone()
