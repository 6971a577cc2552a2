"""Training: arguments, DeepSpeed engine and pipeline, checkpoints, logging, FLOPs, the train loop.

Entry point: `python -m based_megatron.training ARGS` (what `examples/pretrain_based.sh` runs on every rank).
"""
