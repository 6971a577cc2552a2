"""Command-line arguments of `pretrain_based` (Megatron-LM names), their validation and derived sizes.

The flags are Megatron's (`--tensor-model-parallel-size`, `--micro-batch-size`, `--lr-decay-style`, ...), so
Megatron-DeepSpeed and GPT-NeoX users can reuse their launch lines. Model flags (`--model PRESET` plus per-field
overrides) come from `based_megatron.config.add_model_args`, tokenizer flags from `based_megatron.data`.

With no arguments at all the run is the *embedded default* (`--embedded-default`): based-tiny on the sample corpus
that ships with the package, a few hundred steps, on whatever hardware exists.
"""

import argparse
import math
import os

from based_megatron.data.tokenizers import TOKENIZER_TYPES
from based_megatron.training.errors import TrainingError

# Values the embedded default uses for every flag the user did not set: based-tiny on the sample corpus,
# 2 CPU cores -> a few minutes. (The data path and tokenizer are filled in by `pretrain.py` once the sample
# corpus exists.)
EMBEDDED_DEFAULT_DIR = os.path.join("runs", "embedded_default")
EMBEDDED_DEFAULTS = dict(
    model="based-tiny",
    global_batch_size=16,  # the micro batch is 16 / data-parallel size (any rank count dividing 16 works)
    train_iters=300,
    lr=3e-3,
    min_lr=3e-4,
    lr_warmup_iters=10,
    lr_decay_style="cosine",
    weight_decay=0.1,
    adam_beta1=0.9,
    adam_beta2=0.95,
    clip_grad=1.0,
    split="98,2,0",
    save=os.path.join(EMBEDDED_DEFAULT_DIR, "checkpoints"),
    tensorboard_dir=os.path.join(EMBEDDED_DEFAULT_DIR, "tensorboard"),
    save_interval=100,
    eval_interval=100,
    eval_iters=5,
    log_interval=20,
)

LR_DECAY_STYLES = ("cosine", "linear", "constant")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pretrain_based",
        description="Pretrain a Based (or Transformer++) language model with megatron-core layers and DeepSpeed.",
        allow_abbrev=False,
    )
    parser.add_argument("--embedded-default", action="store_true",
                        help="run the built-in demo (the default with no arguments): based-tiny on the sample corpus; "
                             "any other flag given overrides its value")
    _add_parallel_args(parser.add_argument_group("parallelism"))
    _add_batch_args(parser.add_argument_group("batch and schedule"))
    _add_optimizer_args(parser.add_argument_group("optimizer"))
    _add_data_args(parser.add_argument_group("data"))
    _add_checkpoint_args(parser.add_argument_group("checkpoints"))
    _add_logging_args(parser.add_argument_group("logging and evaluation"))
    _add_deepspeed_args(parser.add_argument_group("DeepSpeed"))
    _add_fault_args(parser.add_argument_group("faults"))
    from based_megatron.config import add_model_args
    add_model_args(parser)
    return parser


def _add_parallel_args(group):
    group.add_argument("--tensor-model-parallel-size", type=int, default=1)
    group.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    group.add_argument("--sequence-parallel", action="store_true",
                       help="shard layer norms / dropout activations over the tensor-parallel group (needs TP > 1)")
    group.add_argument("--recompute-activations", action="store_true",
                       help="keep only each layer's input and recompute the layer in backward (less memory, ~1/3 "
                            "more compute)")


def _add_batch_args(group):
    group.add_argument("--micro-batch-size", type=int, default=None, help="sequences per rank per micro-step")
    group.add_argument("--global-batch-size", type=int, default=None,
                       help="sequences per optimizer step (default: micro batch x data-parallel size)")
    group.add_argument("--train-iters", type=int, default=None)
    group.add_argument("--train-tokens", type=int, default=None,
                       help="alternative to --train-iters: iterations = ceil(tokens / (global batch x seq length))")
    group.add_argument("--exit-interval", type=int, default=None,
                       help="save a checkpoint and exit once the iteration is a multiple of this")


def _add_optimizer_args(group):
    group.add_argument("--lr", type=float, default=None, help="peak learning rate")
    group.add_argument("--min-lr", type=float, default=0.0)
    group.add_argument("--lr-warmup-iters", type=int, default=0)
    group.add_argument("--lr-decay-iters", type=int, default=None, help="default: the number of training iterations")
    group.add_argument("--lr-decay-style", choices=LR_DECAY_STYLES, default="cosine")
    group.add_argument("--weight-decay", type=float, default=0.01)
    group.add_argument("--adam-beta1", type=float, default=0.9)
    group.add_argument("--adam-beta2", type=float, default=0.999)
    group.add_argument("--adam-eps", type=float, default=1e-8)
    group.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clipping (0 disables)")
    group.add_argument("--bf16", action="store_true", help="bf16 weights and activations (fp32 master weights)")
    group.add_argument("--seed", type=int, default=1234)


def _add_data_args(group):
    group.add_argument("--data-path", nargs="+", default=None,
                       help="indexed dataset prefix(es) without .bin/.idx; a blend is `W1 PREFIX1 W2 PREFIX2 ...`")
    group.add_argument("--split", default="969,30,1", help="train,valid,test proportions")
    group.add_argument("--data-cache-path", default=None, help="where megatron-core caches dataset indices")
    group.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default=None,
                       help="default: the tokenizer recorded next to the (first) dataset by tools/preprocess_data.py")
    group.add_argument("--tokenizer-model", help="huggingface: tokenizer.json or a local directory; sentencepiece: .model")
    group.add_argument("--vocab-file", help="gpt2bpe: vocab.json")
    group.add_argument("--merge-file", help="gpt2bpe: merges.txt")
    group.add_argument("--eod-token", help="end-of-document token (default: the tokenizer's eos or <|endoftext|>)")


def _add_checkpoint_args(group):
    group.add_argument("--save", default=None, help="checkpoint directory")
    group.add_argument("--load", default=None, help="resume from the latest complete checkpoint in this directory")
    group.add_argument("--load-weights-only", action="store_true",
                       help="take only the model weights from --load (any TP/PP layout: they are resharded) and start "
                            "a fresh optimizer, LR schedule and data position at iteration 0")
    group.add_argument("--save-interval", type=int, default=None)
    group.add_argument("--keep-last", type=int, default=2, help="checkpoints kept in --save (older ones are deleted)")
    group.add_argument("--no-save-on-signal", dest="save_on_signal", action="store_false",
                       help="on SIGTERM/SIGINT exit without saving (default: save, then exit 0)")


def _add_logging_args(group):
    group.add_argument("--log-interval", type=int, default=10)
    group.add_argument("--eval-interval", type=int, default=1000)
    group.add_argument("--eval-iters", type=int, default=10)
    group.add_argument("--tensorboard-dir", default=None)
    group.add_argument("--peak-tflops", type=float, default=None,
                       help="peak TFLOP/s per device for MFU (default: the GPU's dense bf16/fp32 datasheet peak, "
                            "or a matmul measured at start-up on CPU)")
    group.add_argument("--profile", action="store_true",
                       help="profile iterations [--profile-step-start, --profile-step-end) on --profile-ranks: with "
                            "--use-pytorch-profiler by torch.profiler, else by cudaProfilerStart/Stop for "
                            "`nsys profile --capture-range=cudaProfilerApi`")
    group.add_argument("--profile-step-start", type=int, default=10,
                       help="profiling starts with the step after this many completed iterations")
    group.add_argument("--profile-step-end", type=int, default=12, help="... and stops after this many")
    group.add_argument("--profile-ranks", type=int, nargs="+", default=[0], help="global ranks to profile")
    group.add_argument("--use-pytorch-profiler", action="store_true",
                       help="--profile with torch.profiler: a trace in --tensorboard-dir (TensorBoard's profiler "
                            "plugin, Perfetto) and a table of the top operators and kernels in the log")


def _add_deepspeed_args(group):
    group.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", default=None,
                       help="DeepSpeed JSON config (ZeRO stage, bf16, ...); batch sizes and clipping come from the flags")
    group.add_argument("--zero-stage", type=int, choices=(1, 2), default=None,
                       help="ZeRO stage when the JSON config does not set one (default 1)")
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=None,
                       help="set by the DeepSpeed launcher")


def _add_fault_args(group):
    group.add_argument("--max-consecutive-skipped-steps", type=int, default=10,
                       help="after this many non-finite (NaN/Inf) steps in a row, save and stop")


def parse_args(argv, world_size=None):
    """Parse `argv` (no arguments -> the embedded default), validate, and derive the parallel sizes."""
    argv = list(argv) if argv else ["--embedded-default"]
    parser = build_parser()
    if "--embedded-default" in argv:
        parser.set_defaults(**EMBEDDED_DEFAULTS)
    args = parser.parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    validate_args(args, world_size)
    return args


def validate_args(args, world_size):
    """Check the flags against each other; set args.world_size, data_parallel_size, grad_accum_steps, train_iters."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    _require(tp >= 1 and pp >= 1, "--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
    _require(world_size % (tp * pp) == 0,
             f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
             f"--pipeline-model-parallel-size {pp}")
    args.world_size = world_size
    args.data_parallel_size = world_size // (tp * pp)
    _require(not args.sequence_parallel or tp > 1, "--sequence-parallel needs --tensor-model-parallel-size > 1")

    if args.micro_batch_size is None and args.embedded_default:
        args.micro_batch_size = max(1, args.global_batch_size // args.data_parallel_size)
    _require(args.micro_batch_size is not None and args.micro_batch_size >= 1, "--micro-batch-size (>= 1) is required")
    per_step = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = per_step
    _require(args.global_batch_size % per_step == 0,
             f"--global-batch-size {args.global_batch_size} must be a multiple of --micro-batch-size "
             f"{args.micro_batch_size} x data-parallel size {args.data_parallel_size} (= world size {world_size} / "
             f"(TP {tp} x PP {pp})) = {per_step}")
    args.grad_accum_steps = args.global_batch_size // per_step

    _require((args.train_iters is None) != (args.train_tokens is None),
             "give exactly one of --train-iters and --train-tokens")
    _require(args.lr is not None and args.lr > 0, "--lr (> 0) is required")
    _require(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must be in [0, --lr {args.lr}]")

    if args.save is not None:
        _require(args.save_interval is None or args.save_interval >= 1, "--save-interval must be >= 1")
        _require(args.keep_last >= 1, f"--keep-last must be >= 1, got {args.keep_last}")
    else:
        _require(args.save_interval is None, "--save-interval needs --save DIR")
    for flag in ("log_interval", "eval_interval", "max_consecutive_skipped_steps"):
        _require(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1")
    _require(args.eval_iters >= 0, "--eval-iters must be >= 0")
    _require(args.exit_interval is None or args.exit_interval >= 1, "--exit-interval must be >= 1")
    _require(args.profile or not args.use_pytorch_profiler,
             "--use-pytorch-profiler only picks the profiler of --profile: add --profile (steps "
             "--profile-step-start to --profile-step-end)")
    if args.profile:
        import torch

        _require(0 <= args.profile_step_start < args.profile_step_end,
                 f"--profile-step-start {args.profile_step_start} must be >= 0 and smaller than --profile-step-end "
                 f"{args.profile_step_end}")
        _require(all(0 <= rank < world_size for rank in args.profile_ranks),
                 f"--profile-ranks {' '.join(map(str, args.profile_ranks))}: ranks must be in [0, world size "
                 f"{world_size})")
        _require(not args.use_pytorch_profiler or args.tensorboard_dir is not None,
                 "--use-pytorch-profiler writes its trace into --tensorboard-dir: give one")
        _require(args.use_pytorch_profiler or torch.cuda.is_available(),
                 "--profile without --use-pytorch-profiler brackets the steps for nsys (cudaProfilerStart/Stop) and "
                 "needs CUDA; add --use-pytorch-profiler to profile on this machine")
    _require(args.embedded_default or args.data_path is not None,
             "--data-path is required (an indexed dataset prefix, e.g. data/pile_text_document for "
             "data/pile_text_document.{bin,idx}); run with no arguments for the embedded default on the sample corpus")


def _require(condition, message):
    if not condition:
        raise TrainingError(message)


def resolve_train_iters(args, seq_length):
    """Set args.seq_length, args.train_iters (from --train-tokens if given) and args.lr_decay_iters."""
    args.seq_length = seq_length
    if args.train_tokens is not None:
        args.train_iters = math.ceil(args.train_tokens / (args.global_batch_size * seq_length))
    _require(args.train_iters >= 1, f"--train-iters must be >= 1, got {args.train_iters}")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    _require(0 <= args.lr_warmup_iters < args.lr_decay_iters,
             f"--lr-warmup-iters {args.lr_warmup_iters} must be smaller than --lr-decay-iters {args.lr_decay_iters}")
