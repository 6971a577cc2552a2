"""Export a training checkpoint (any TP x PP x DP / ZeRO layout) as a Hugging Face model directory.

    python tools/convert_to_hf.py --load CKPT_DIR [--iteration N] --output HF_DIR [--dtype bf16|fp32] [--verify]

Based models are written as `model_type: "based"` with the modeling code and `auto_map`
(AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True) works offline); Transformer++
models (every layer full attention) as a standard LlamaForCausalLM. The directory also gets
generation_config.json and the tokenizer the run trained with. --verify compares fp32 logits of the
training-side model and of the exported directory on the same tokens (relative difference <= 1e-4).
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="training checkpoint directory (the --save of the run)")
    parser.add_argument("--iteration", type=int, default=None, help="iteration to export (default: latest)")
    parser.add_argument("--output", required=True, help="Hugging Face directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory to ship (default: the one stored with the checkpoint)")
    parser.add_argument("--max-shard-size", default="2GB", help="split model.safetensors above this size")
    parser.add_argument("--verify", action="store_true",
                        help="compare fp32 logits of the training model and the export (fails above 1e-4 relative)")
    parser.add_argument("--verify-seq-length", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    return parser.parse_args(argv)


def eos_token_id(tokenizer_dir):
    if tokenizer_dir is None:
        return None
    from based_megatron.data.tokenizers import MANIFEST_NAME, load_tokenizer

    if os.path.isfile(os.path.join(tokenizer_dir, MANIFEST_NAME)):
        return load_tokenizer(tokenizer_dir).eod
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir).eos_token_id


def export(args):
    import torch

    from based_megatron.hf import convert
    from based_megatron.training.checkpointing import checkpoint_tokenizer_dir, load_full_state_dict

    convert.prepare_output_dir(args.output, args.overwrite)  # refuse early, before the slow load
    start = time.time()
    config, state = load_full_state_dict(args.load, args.iteration)
    tokenizer_dir = args.tokenizer or checkpoint_tokenizer_dir(args.load, args.iteration)
    if tokenizer_dir is None:
        print(f"warning: {args.load} stores no tokenizer and --tokenizer was not given; exporting without one")
    eos = eos_token_id(tokenizer_dir)
    if convert.is_transformer_pp(config):
        hf_config = convert.megatron_to_llama_config(config, eos)
        hf_state = convert.megatron_to_llama_state_dict(config, state)
    else:
        hf_config = convert.megatron_to_hf_config(config, eos)
        hf_state = convert.megatron_to_hf_state_dict(config, state)
    convert.write_hf_directory(args.output, hf_config, hf_state, tokenizer_dir, getattr(torch, DTYPES[args.dtype]),
                               max_shard_size=args.max_shard_size)
    print(f"wrote {args.output} ({type(hf_config).__name__}, {args.dtype}) in {time.time() - start:.1f} s")
    if args.verify:
        verify(args, config, state, hf_config, hf_state)


def verify(args, config, state, hf_config, hf_state):
    import torch
    from transformers import AutoModelForCausalLM

    from based_megatron.hf import convert, verify

    tokens = verify.verification_tokens(config.vocab_size, args.verify_seq_length)
    expected = verify.training_model_logits(config, state, tokens)
    in_memory = convert.build_hf_model(hf_config, hf_state, torch.float32)
    difference = verify.check_logits("converted weights", verify.hf_model_logits(in_memory, tokens), expected)
    print(f"verify: converted weights vs training model, relative difference {difference:.2e}")
    exported = AutoModelForCausalLM.from_pretrained(args.output, trust_remote_code=True, dtype=torch.float32)
    rtol = verify.VERIFY_RTOL if args.dtype == "fp32" else 2e-2  # bf16 weights: a rounding-level check only
    difference = verify.check_logits(f"{args.output} ({args.dtype})", verify.hf_model_logits(exported, tokens),
                                     expected, rtol)
    print(f"verify: {args.output} reloaded vs training model, relative difference {difference:.2e}: OK")


def main(argv=None):
    from based_megatron.hf.convert import ConversionError
    from based_megatron.hf.verify import VerificationError
    from based_megatron.training.errors import TrainingError

    args = parse_args(argv)
    try:
        export(args)
    except (ConversionError, VerificationError, TrainingError, FileNotFoundError) as error:
        if isinstance(error, VerificationError) and os.path.isdir(args.output):
            failed = args.output.rstrip("/") + ".failed-verification"
            shutil.rmtree(failed, ignore_errors=True)
            os.rename(args.output, failed)
            print(f"convert_to_hf: the export was moved to {failed}", file=sys.stderr)
        sys.exit(f"convert_to_hf: error: {error}")


if __name__ == "__main__":
    main()
