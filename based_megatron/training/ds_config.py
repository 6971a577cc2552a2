"""The DeepSpeed config: the user's JSON (`--deepspeed_config`) completed from the Megatron-style flags.

The flags own the batch sizes, gradient clipping and precision; the JSON owns ZeRO and any other engine setting.
A JSON value that contradicts a flag is an error (never silently overridden). The optimizer and LR schedule are built
in Python (AdamW with Megatron's weight-decay groups, megatron-core's OptimizerParamScheduler), so the JSON must
not define `optimizer` or `scheduler`.

ZeRO and pipeline parallelism: stage 1 combines with `--pipeline-model-parallel-size > 1`; stage 2 only with
PP = 1 (DeepSpeed's PipelineEngine refuses stage 2 by design); stage 3 is not supported.
"""

import json

from based_megatron.training.errors import TrainingError


def load_json_config(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise TrainingError(f"--deepspeed_config: file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise TrainingError(f"--deepspeed_config: {path} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") \
            from None


def build_deepspeed_config(args):
    """Return the DeepSpeed config dict for `args` (validated by arguments.validate_args)."""
    source = args.deepspeed_config or "the default DeepSpeed config"
    config = load_json_config(args.deepspeed_config) if args.deepspeed_config else {}
    if not isinstance(config, dict):
        raise TrainingError(f"{source}: expected a JSON object at the top level")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise TrainingError(f"{source}: remove the '{section}' section; the optimizer and LR schedule come from "
                                "the flags (--lr, --min-lr, --lr-warmup-iters, --lr-decay-style, --weight-decay, "
                                "--adam-beta1/2)")
    if config.get("fp16", {}).get("enabled", False):
        raise TrainingError(f"{source}: fp16 is not supported; use bf16 (--bf16 or \"bf16\": {{\"enabled\": true}})")

    _merge(config, "train_micro_batch_size_per_gpu", args.micro_batch_size, "--micro-batch-size", source)
    _merge(config, "gradient_accumulation_steps", args.grad_accum_steps,
           "--global-batch-size / (--micro-batch-size x data-parallel size)", source)
    _merge(config, "train_batch_size", args.global_batch_size, "--global-batch-size", source)
    _merge(config, "gradient_clipping", float(args.clip_grad), "--clip-grad", source)

    bf16 = config.setdefault("bf16", {})
    if args.bf16:
        bf16["enabled"] = True
    args.bf16 = bool(bf16.get("enabled", False))

    zero = config.setdefault("zero_optimization", {})
    if "stage" in zero and args.zero_stage is not None and zero["stage"] != args.zero_stage:
        raise TrainingError(f"{source}: zero_optimization.stage is {zero['stage']} but --zero-stage is "
                            f"{args.zero_stage}")
    zero.setdefault("stage", args.zero_stage if args.zero_stage is not None else 1)
    stage = zero["stage"]
    if stage not in (1, 2):
        raise TrainingError(f"{source}: zero_optimization.stage must be 1 or 2, got {stage} (stage 0 has no "
                            "non-finite-step skipping; stage 3 is not supported)")
    if stage == 2 and args.pipeline_model_parallel_size > 1:
        raise TrainingError(f"{source}: ZeRO stage 2 cannot be combined with --pipeline-model-parallel-size "
                            f"{args.pipeline_model_parallel_size} (DeepSpeed's pipeline engine supports ZeRO 0/1); "
                            "use stage 1")
    if zero.get("compute_grad_norm", True) is not True:
        raise TrainingError(f"{source}: zero_optimization.compute_grad_norm must stay true: non-finite steps are "
                            "detected (and skipped) from the global gradient norm")
    # Optimizer states are merged/re-split on load, so a run may resume with another data-parallel size.
    zero.setdefault("elastic_checkpoint", True)
    args.zero_stage = stage

    config.setdefault("steps_per_print", 10**9)   # our own log lines replace DeepSpeed's
    config.setdefault("wall_clock_breakdown", False)
    return config


def _merge(config, key, value, flag, source):
    if key in config and config[key] != value:
        raise TrainingError(f"{source}: '{key}' is {config[key]} but {flag} gives {value}; remove it from the JSON "
                            "or make them agree")
    config[key] = value
