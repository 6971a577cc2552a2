"""Import a Hugging Face Based directory as a training checkpoint, for continued pretraining.

    python tools/convert_from_hf.py --load HF_DIR --output CKPT_DIR [--tensor-model-parallel-size 2]
        [--pipeline-model-parallel-size 2] [--seq-length 2048] [--tokenizer DIR] [--overwrite]

HF_DIR is one of our exports (tools/convert_to_hf.py) or a released HazyResearch Based checkpoint
(GPT2Config-style config.json with alt_mixer_layers / alt_mixer_2_layers and mixer dicts, plus
pytorch_model.bin; released checkpoints have no conv bias: it is imported as zeros). The checkpoint
holds full tensors; `--load CKPT_DIR` of a training run slices them for its own TP x PP layout. The
layout given here is validated against the model (heads, channels and layers must split).
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="Hugging Face Based directory")
    parser.add_argument("--output", required=True, help="training checkpoint directory to write")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1, help="layout to validate for")
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="layout to validate for")
    parser.add_argument("--seq-length", type=int, default=None,
                        help="training sequence length (default: the config's l_max, else 2048)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer (HF directory or tokenizer.json) to store with the checkpoint "
                             "(default: the one in --load, if any)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    return parser.parse_args(argv)


def hf_tokenizer_source(args):
    if args.tokenizer:
        return args.tokenizer
    has_tokenizer = any(os.path.isfile(os.path.join(args.load, name)) for name in ("tokenizer.json", "vocab.json"))
    return args.load if has_tokenizer else None


def record_tokenizer(source, directory):
    """Store `source` as a based_megatron tokenizer directory (what training and convert_to_hf read)."""
    from based_megatron.data.tokenizers import build_tokenizer, save_tokenizer

    save_tokenizer(build_tokenizer("huggingface", tokenizer_model=source), directory)


def import_checkpoint(args):
    from based_megatron.config import BasedConfig
    from based_megatron.hf import convert
    from based_megatron.training.checkpointing import save_checkpoint_from_full_state_dict

    hf_config, hf_state = convert.load_hf_directory(args.load)
    fields = convert.hf_to_megatron_fields(hf_config, args.seq_length)
    BasedConfig(**fields, tensor_model_parallel_size=args.tensor_model_parallel_size,
                pipeline_model_parallel_size=args.pipeline_model_parallel_size)  # raises ConfigError if it cannot split
    config = BasedConfig(**fields)
    state = convert.hf_to_megatron_state_dict(hf_config, hf_state, config)
    convert.prepare_output_dir(args.output, args.overwrite)
    source = hf_tokenizer_source(args)
    if source is None:
        print(f"warning: {args.load} has no tokenizer and --tokenizer was not given; the checkpoint stores none")
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = None
        if source is not None:
            tokenizer_dir = os.path.join(scratch, "tokenizer")
            record_tokenizer(source, tokenizer_dir)
        save_checkpoint_from_full_state_dict(config, state, args.output, tokenizer_dir=tokenizer_dir)
    print(f"wrote {args.output}: {config.layer_pattern} ({config.num_layers} layers, d={config.hidden_size}), "
          f"loadable at any TP x PP (checked TP={args.tensor_model_parallel_size} x "
          f"PP={args.pipeline_model_parallel_size})")


def main(argv=None):
    from based_megatron.config import ConfigError
    from based_megatron.data.tokenizers import TokenizerError
    from based_megatron.hf.convert import ConversionError

    args = parse_args(argv)
    try:
        import_checkpoint(args)
    except (ConversionError, ConfigError, TokenizerError) as error:
        sys.exit(f"convert_from_hf: error: {error}")


if __name__ == "__main__":
    main()
