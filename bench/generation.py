"""Generation throughput and memory: exported Based vs exported Transformer++ of the same size.

    python bench/generation.py --config based-1.3b --device cuda --dtype bf16 \
        --batch-sizes 1,8,32,128 --prompt-len 2048 --new-tokens 1024

Both models are built exactly as tools/convert_to_hf.py exports them (BasedForCausalLM with its recurrent
cache; LlamaForCausalLM with the standard KV cache) from the presets based-* / transformer-* (or the tiny
pair), with random weights (speed does not depend on them). For every batch size: prefill time of the
prompt, wall time of greedy `generate()` for exactly --new-tokens tokens, generated tokens/s
(batch x new tokens / generate time), size of the cache after generation and peak device memory (CUDA).
Prints a markdown table. The paper reports 24x FlashAttention-2 at 1.3B, batch 128, 1024 new tokens.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAIRS = {  # --config -> (Based preset, Transformer++ preset)
    "based-1.3b": ("based-1.3b", "transformer-1.3b"),
    "based-360m": ("based-360m", "transformer-360m"),
    "tiny": ("based-tiny", "based-tiny"),
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(PAIRS), default="based-1.3b")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="comma-separated")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--models", default="based,transformer", help="which of based,transformer to run")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def hf_configs(pair: str):
    """(Based HF config, Llama config) as the exporter writes them for the two presets."""
    from based_megatron.config import build_config
    from based_megatron.hf import convert

    based_preset, transformer_preset = PAIRS[pair]
    based = convert.megatron_to_hf_config(build_config(based_preset), eos_token_id=0)
    transformer = build_config(transformer_preset)
    if pair == "tiny":  # same width and depth, every layer full attention
        transformer = build_config(transformer_preset, layer_pattern="A" * transformer.num_layers)
    return based, convert.megatron_to_llama_config(transformer, eos_token_id=0)


def build(config, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    from based_megatron.hf import register_auto_classes

    register_auto_classes()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def cache_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None)


def synchronize(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, batch: int, prompt_len: int, new_tokens: int, device) -> dict:
    """Prefill time, generate() time, tokens/s, cache size, peak memory of one configuration."""
    import torch

    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device)
    mask = torch.ones_like(prompt)
    greedy = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        model.generate(prompt[:, :8], attention_mask=mask[:, :8], max_new_tokens=2, **greedy)  # warm-up
        synchronize(device)
        if str(device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model(prompt, attention_mask=mask, logits_to_keep=1)
        synchronize(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             return_dict_in_generate=True, **greedy)
        synchronize(device)
        seconds = time.perf_counter() - start
    generated = out.sequences.shape[1] - prompt_len
    peak = torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else float("nan")
    return dict(prefill_ms=1e3 * prefill, seconds=seconds, tokens_per_s=batch * generated / seconds,
                cache_mb=cache_bytes(out.cache if hasattr(out, "cache") else out.past_key_values) / 2**20, peak_gb=peak)


def run(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")])
    torch.manual_seed(args.seed)
    configs = dict(zip(("based", "transformer"), hf_configs(args.config)))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    names = args.models.split(",")
    models = {name: build(configs[name], device, dtype) for name in names}    # both fit: 2 x 1.3B in bf16
    rows = {}
    for batch in batch_sizes:           # batch-major, so that a time limit still leaves complete comparisons
        for name in names:
            try:
                rows[(batch, name)] = measure(models[name], batch, args.prompt_len, args.new_tokens, device)
            except torch.cuda.OutOfMemoryError:
                rows[(batch, name)] = None
                torch.cuda.empty_cache()
            print(f"measured {name} batch {batch}: {rows[(batch, name)]}", flush=True)  # survives a time limit
    print(f"\n{args.config}, {device}, {str(dtype).removeprefix('torch.')}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens\n")
    print("| batch | model | prefill ms | generate s | tokens/s | cache MB | peak GB | Based speed-up |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch in batch_sizes:
        for name in args.models.split(","):
            row, base = rows[(batch, name)], rows.get((batch, "transformer"))
            if row is None:
                print(f"| {batch} | {name} | OOM | | | | | |")
                continue
            speedup = f"{row['tokens_per_s'] / base['tokens_per_s']:.2f}x" if name == "based" and base else ""
            print(f"| {batch} | {name} | {row['prefill_ms']:.1f} | {row['seconds']:.2f} | {row['tokens_per_s']:.1f} | "
                  f"{row['cache_mb']:.1f} | {row['peak_gb']:.2f} | {speedup} |")
    return rows


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
