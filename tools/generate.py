"""Generate a continuation with an exported model and report the speed.

    python tools/generate.py HF_DIR --prompt "The Based architecture" [--max-new-tokens 64]
        [--greedy | --temperature 0.8 --top-p 0.95] [--device cuda] [--dtype bf16]

Prints the prompt's continuation, then the number of new tokens and tokens/s of `generate()` (prefill included).
Works for Based exports (recurrent cache) and Transformer++ (Llama) exports alike.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Hugging Face model directory")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--greedy", action="store_true", help="greedy decoding (the default without --temperature)")
    sampling.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    return parser.parse_args(argv)


def main(argv=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"generate: error: {args.model} has no config.json (expected an exported model directory)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype or ("bf16" if device.startswith("cuda") else "fp32")])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=dtype).to(device).eval()
    inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    if inputs["input_ids"].shape[1] == 0:
        sys.exit("generate: error: --prompt encodes to no tokens")
    sampling = {"do_sample": False}
    if args.temperature is not None:
        sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p}
    torch.manual_seed(args.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, pad_token_id=pad, **sampling)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    print(tokenizer.decode(new_tokens, skip_special_tokens=True))
    print(f"[{len(new_tokens)} new tokens in {seconds:.2f} s: {len(new_tokens) / seconds:.1f} tokens/s on {device}]")


if __name__ == "__main__":
    main()
