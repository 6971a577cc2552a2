"""pretrain_based: the training entry point (`deepspeed examples/pretrain_based.sh ARGS`, or
`python -m based_megatron.training ARGS` under any launcher that sets RANK/WORLD_SIZE).

One iteration = one optimizer step on --global-batch-size sequences: PP = 1 runs the DeepSpeed engine's
forward/backward/step per micro-batch, PP > 1 DeepSpeed's PipelineEngine.train_batch. A step whose gradients are
not finite is skipped by DeepSpeed's ZeRO optimizer (no update, LR schedule not advanced), reported and counted;
--max-consecutive-skipped-steps of them in a row save a checkpoint and stop.
"""

import math
import os
import signal
import sys
import time

import torch

from based_megatron.training.errors import TrainingError

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NONFINITE = 3
CLIENT_STATE_KEY = "based_training"  # our part of DeepSpeed's client state (its own keys live beside it)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = [a for a in argv if not a.startswith("--local_rank=")]  # added by the DeepSpeed launcher
    from based_megatron.config import ConfigError
    from based_megatron.data.tokenizers import TokenizerError

    try:
        return pretrain(argv)
    except (TrainingError, ConfigError, TokenizerError, FileNotFoundError) as error:
        rank = os.environ.get("RANK", "0")
        prefix = "" if os.environ.get("WORLD_SIZE", "1") == "1" else f"[rank {rank}] "
        print(f"{prefix}pretrain_based: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def pretrain(argv):
    from based_megatron.training import distributed
    from based_megatron.training.arguments import parse_args
    from based_megatron.training.ds_config import build_deepspeed_config

    args = parse_args(argv)
    ds_config = build_deepspeed_config(args)
    distributed.initialize_distributed(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                       args.seed)
    try:
        return Trainer(args, ds_config).run()
    finally:
        distributed.destroy()


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop saves at the end of the current iteration and exits 0."""

    def __init__(self):
        self.received = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def any_rank(self):
        flag = torch.tensor([1.0 if self.received else 0.0], device=_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return flag.item() > 0


def _device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


class Trainer:
    def __init__(self, args, ds_config):
        from megatron.core import parallel_state

        self.args = args
        self.rank = torch.distributed.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.stop_signal = StopSignal()
        self.tokenizer = self._prepare_data()
        self.config = self._model_config()
        from based_megatron.training.arguments import resolve_train_iters
        resolve_train_iters(args, self.config.seq_length)
        self.iteration, self.consumed_samples, self.total_skipped = 0, 0, 0
        self.engine, self.scheduler, self.module = self._build_engine(ds_config)
        self.train_data, self.valid_data = self._build_datasets()
        self.logger = self._build_logger()
        from based_megatron.training.profiling import StepProfiler
        self.profiler = StepProfiler(args, self.rank)

    # ---------------------------------------------------------------- setup

    def _prepare_data(self):
        """The tokenizer; the embedded default first builds the sample corpus (local rank 0 of each node)."""
        from based_megatron.data.gpt_datasets import parse_data_path, resolve_tokenizer
        from based_megatron.data.tokenizers import build_tokenizer

        args = self.args
        if args.embedded_default and args.data_path is None:
            from based_megatron.data.sample_corpus import ensure_sample_dataset
            from based_megatron.training.arguments import EMBEDDED_DEFAULT_DIR

            data_dir = os.path.join(EMBEDDED_DEFAULT_DIR, "data")
            prefix = None
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                self._print(f"embedded default: preparing the sample corpus and its byte tokenizer in {data_dir}")
                prefix = ensure_sample_dataset(data_dir)
            torch.distributed.barrier()
            args.data_path = [prefix or ensure_sample_dataset(data_dir)]
        try:
            prefixes, _ = parse_data_path(args.data_path)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        for prefix in prefixes:
            if not (os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")):
                raise TrainingError(f"--data-path {prefix}: no {prefix}.bin / {prefix}.idx (give the prefix without "
                                    "the extension; build it with tools/preprocess_data.py)")
        tokenizer = None
        if args.tokenizer_type is not None:
            tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file,
                                        args.eod_token)
        try:
            return resolve_tokenizer(prefixes, tokenizer)
        except ValueError as error:
            raise TrainingError(f"--data-path: {error}") from None

    def _model_config(self):
        from based_megatron.config import config_from_args

        args = self.args
        overrides = dict(tensor_model_parallel_size=args.tensor_model_parallel_size,
                         pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                         sequence_parallel=args.sequence_parallel, bf16=args.bf16,
                         params_dtype=torch.bfloat16 if args.bf16 else torch.float32)
        if args.model_vocab_size is None:  # Megatron: the vocabulary comes from the tokenizer
            overrides["vocab_size"] = self.tokenizer.vocab_size
        config = config_from_args(args, **overrides)
        if config.vocab_size < self.tokenizer.vocab_size:
            raise TrainingError(f"--vocab-size {config.vocab_size} is smaller than the tokenizer's vocabulary "
                                f"({self.tokenizer.vocab_size})")
        return config

    def _build_engine(self, ds_config):
        """The DeepSpeed engine over this rank's layers, AdamW, the LR schedule; resumed from --load if asked."""
        import deepspeed
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from based_megatron.training import deepspeed_compat, distributed

        args = self.args
        module = self._build_module()
        resume_tag = self._prepare_load(module)
        optimizer = torch.optim.AdamW(_param_groups(module), lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_eps, weight_decay=args.weight_decay)
        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr, lr_warmup_steps=args.lr_warmup_iters,
            lr_decay_steps=args.lr_decay_iters, lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay,
            end_wd=args.weight_decay, wd_incr_steps=args.train_iters, wd_incr_style="constant")
        mpu = distributed.MegatronMPU() if args.pipeline_model_parallel_size == 1 else None
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config, mpu=mpu)
        deepspeed_compat.fuse_overflow_check(engine.optimizer)
        self.split_dims = _gather_split_dims(module, self.config.num_layers)
        if resume_tag is not None:
            self._resume(engine, scheduler, resume_tag)
        return engine, scheduler, module

    def _build_module(self):
        from based_megatron.training.model import (SequentialLM, build_pipeline_module, layer_config,
                                                   register_sequence_parallel_grad_allreduce)

        args = self.args
        layers_config = layer_config(self.config)
        if args.pipeline_model_parallel_size > 1:
            module = build_pipeline_module(layers_config, args.pipeline_model_parallel_size, args.seed,
                                           args.recompute_activations)
        else:
            module = SequentialLM(layers_config, args.seed, args.recompute_activations)
        register_sequence_parallel_grad_allreduce(module)
        return module

    def _prepare_load(self, module):
        """Weights-only loads happen here, before DeepSpeed copies the weights; returns the tag to resume, if any."""
        from based_megatron.training import checkpointing
        from based_megatron.training.model import local_layers

        args = self.args
        if not args.load:
            return None
        tag, meta = checkpointing.inspect_for_resume(args.load)
        if tag is None:
            self._print(f"--load {args.load}: no checkpoint yet, starting from scratch")
            return None
        if meta["format"] == checkpointing.FORMAT_FULL or args.load_weights_only:
            self._print(f"loading the weights of {os.path.join(args.load, tag)} (fresh optimizer, iteration 0)")
            checkpointing.load_weights_into_layers(local_layers(module), args.load, tag, self.config.num_layers)
            return None
        checkpointing.check_resume_compatible(args.load, tag, meta, args.tensor_model_parallel_size,
                                              args.pipeline_model_parallel_size,
                                              checkpointing.config_to_json(self.config))
        return tag

    def _resume(self, engine, scheduler, tag):
        from based_megatron.training import checkpointing

        args = self.args
        saved_dp = checkpointing.read_meta(args.load, tag)["data_parallel_size"]
        state = checkpointing.load_checkpoint(engine, args.load, tag, saved_dp)[CLIENT_STATE_KEY]
        scheduler.load_state_dict(state["lr_scheduler"])
        self.iteration, self.consumed_samples = state["iteration"], state["consumed_samples"]
        self.total_skipped = state["skipped_steps"]
        if self.consumed_samples != self.iteration * args.global_batch_size:
            raise TrainingError(f"--load {args.load}: checkpoint {tag} consumed {self.consumed_samples} samples in "
                                f"{self.iteration} iterations, not --global-batch-size {args.global_batch_size} per "
                                "iteration; resume with the global batch size it was trained with")
        self._print(f"resumed from {os.path.join(args.load, tag)} at iteration {self.iteration}")

    def _build_datasets(self):
        from based_megatron.training.data import MicroBatches, build_datasets

        args = self.args
        train, valid = build_datasets(args, self.tokenizer, train_samples=args.train_iters * args.global_batch_size,
                                      valid_samples=args.eval_iters * args.global_batch_size)
        return MicroBatches(train, self.consumed_samples, args, self.dp_rank, "train"), valid

    def _build_logger(self):
        from based_megatron.training.flops import forward_flops_per_token, peak_tflops, training_flops_per_token
        from based_megatron.training.metrics import TrainingLogger

        c = self.config
        forward = forward_flops_per_token(c.layer_symbols, hidden_size=c.hidden_size,
                                          ffn_hidden_size=c.ffn_hidden_size, vocab_size=c.padded_vocab_size,
                                          seq_length=c.seq_length, heads=c.la_num_heads,
                                          feature_dim=c.la_feature_dim, conv_kernel=c.conv_kernel_size,
                                          window=c.swa_window)
        peak, source = peak_tflops(self.args.bf16, self.args.peak_tflops)
        return TrainingLogger(self.args, training_flops_per_token(forward, self.args.recompute_activations), peak, source,
                              self.rank == 0)

    # ---------------------------------------------------------------- the loop

    def run(self):
        args = self.args
        self._print_run_summary()
        consecutive_skipped = 0
        while self.iteration < args.train_iters:
            self.profiler.step_begins(self.iteration)
            start = time.perf_counter()
            lr = self._current_lr()  # the learning rate this step uses
            loss = self._train_step()
            applied = self.engine.was_step_applied() and math.isfinite(loss)
            if applied:
                self.scheduler.step(increment=1)
                _record_optimizer_step(self.scheduler.optimizer, self.scheduler.num_steps)
                consecutive_skipped = 0
            else:
                consecutive_skipped += 1
                self.total_skipped += 1
                self._print(f"WARNING: iteration {self.iteration + 1}: non-finite loss or gradient "
                            f"(loss {loss}); step skipped ({consecutive_skipped} in a row, {self.total_skipped} "
                            "in total)")
            self.iteration += 1
            self.consumed_samples += args.global_batch_size
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.profiler.step_ended(self.iteration)
            self.logger.train_step(self.iteration, self.consumed_samples * args.seq_length, loss,
                                   lr, _grad_norm(self.engine), time.perf_counter() - start,
                                   skipped=not applied)
            if consecutive_skipped >= args.max_consecutive_skipped_steps:
                saved = self._save()
                self._print(f"stopping: {consecutive_skipped} consecutive steps had a non-finite loss or gradient "
                            f"(--max-consecutive-skipped-steps {args.max_consecutive_skipped_steps}); "
                            + (f"checkpoint saved in {args.save}" if saved else "no --save, nothing saved")
                            + ". Lower --lr, check the data, or resume with --load.")
                return EXIT_NONFINITE
            if args.eval_iters and self.iteration % args.eval_interval == 0:
                self.logger.validation(self.iteration, self._evaluate())
            if args.save and args.save_interval and self.iteration % args.save_interval == 0:
                self._save()
            if self.stop_signal.any_rank():
                if args.save and args.save_on_signal:
                    self._save()
                self._print(f"received {self.stop_signal.received or 'a stop signal'} at iteration {self.iteration}: "
                            + (f"checkpoint saved in {args.save}; resume with --load {args.save}"
                               if args.save and args.save_on_signal else "exiting without saving"))
                return EXIT_OK
            if args.exit_interval and self.iteration % args.exit_interval == 0:
                if args.save:
                    self._save()
                self._print(f"exiting at iteration {self.iteration} (--exit-interval {args.exit_interval})")
                return EXIT_OK
        self._finish()
        return EXIT_OK

    def _finish(self):
        args = self.args
        self.profiler.finish(self.iteration)
        if args.eval_iters and self.iteration % args.eval_interval != 0:
            self.logger.validation(self.iteration, self._evaluate())
        if args.save:
            self._save()
            self._print(f"checkpoint: {os.path.abspath(os.path.join(args.save, _latest_tag(args.save)))} "
                        f"(resume with --load {args.save})")
        if args.tensorboard_dir:
            self._print(f"TensorBoard logs: {os.path.abspath(args.tensorboard_dir)} "
                        f"(tensorboard --logdir {args.tensorboard_dir})")
        self._print_peak_memory()
        self.logger.close()

    def _print_peak_memory(self):
        """One line with every rank's peak device memory (allocated / reserved by PyTorch's allocator)."""
        if not torch.cuda.is_available():
            return
        from based_megatron.training.distributed import all_gather_objects

        gib = 2 ** 30
        peaks = all_gather_objects((torch.cuda.max_memory_allocated() / gib, torch.cuda.max_memory_reserved() / gib))
        self._print("peak memory per rank (GiB allocated / reserved): "
                    + " | ".join(f"{rank}: {a:.2f} / {r:.2f}" for rank, (a, r) in enumerate(peaks)))

    def _train_step(self):
        """One optimizer step; returns the global-batch mean loss (identical on every rank)."""
        micro_batches = self.train_data.take(self.args.grad_accum_steps)
        if self.args.pipeline_model_parallel_size > 1:
            return float(self.engine.train_batch(_pipe_iterator(micro_batches)))
        losses = []
        for tokens, labels, loss_mask in micro_batches:
            device = _device()
            loss = self.engine(tokens.to(device), labels.to(device), loss_mask.to(device))
            self.engine.backward(loss)
            self.engine.step()
            losses.append(loss.detach())
        return _data_parallel_mean(torch.stack(losses).mean())

    def _evaluate(self):
        """Mean loss over --eval-iters global batches of the validation split (the same batches every time)."""
        from based_megatron.training.data import MicroBatches

        args = self.args
        valid = MicroBatches(self.valid_data, 0, args, self.dp_rank, "validation")
        self.engine.eval()
        losses = []
        with torch.no_grad():
            for _ in range(args.eval_iters):
                batches = valid.take(args.grad_accum_steps)
                if args.pipeline_model_parallel_size > 1:
                    losses.append(float(self.engine.eval_batch(_pipe_iterator(batches))))
                else:
                    device = _device()
                    batch_losses = [self.engine(t.to(device), l.to(device), m.to(device)) for t, l, m in batches]
                    losses.append(_data_parallel_mean(torch.stack(batch_losses).mean()))
        self.engine.train()
        return sum(losses) / len(losses)

    def _save(self):
        from based_megatron.training import checkpointing

        args = self.args
        if not args.save:
            return False
        client_state = {CLIENT_STATE_KEY: dict(iteration=self.iteration, consumed_samples=self.consumed_samples,
                                               skipped_steps=self.total_skipped,
                                               lr_scheduler=self.scheduler.state_dict())}
        meta = dict(format=checkpointing.FORMAT_DEEPSPEED,
                    engine="pipe" if args.pipeline_model_parallel_size > 1 else "plain",
                    tensor_model_parallel_size=args.tensor_model_parallel_size,
                    pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                    data_parallel_size=args.data_parallel_size, zero_stage=args.zero_stage,
                    consumed_samples=self.consumed_samples, model=checkpointing.config_to_json(self.config),
                    tensor_parallel_split_dims=self.split_dims)
        start = time.perf_counter()
        saved = checkpointing.save_checkpoint(self.engine, args.save, self.iteration, client_state, meta,
                                              args.keep_last, tokenizer=self.tokenizer)
        if saved:
            self._print(f"saved checkpoint {checkpointing.tag_for_iteration(self.iteration)} in {args.save} "
                        f"({time.perf_counter() - start:.2f} s)")
        return True

    # ---------------------------------------------------------------- helpers

    def _current_lr(self):
        return self.scheduler.optimizer.param_groups[0]["lr"]

    def _print(self, message):
        if self.rank == 0:
            print(message, flush=True)

    def _print_run_summary(self):
        args, c = self.args, self.config
        params = sum(p.numel() for p in self.module.parameters())
        self._print(
            f"training {args.model} (layers {c.layer_pattern}, hidden {c.hidden_size}, vocab {c.vocab_size} padded to "
            f"{c.padded_vocab_size}) | world {args.world_size} = TP {args.tensor_model_parallel_size} x PP "
            f"{args.pipeline_model_parallel_size} x DP {args.data_parallel_size} | ZeRO {args.zero_stage} | "
            f"{'bf16' if args.bf16 else 'fp32'} | parameters on rank 0: {params:,} | global batch "
            f"{args.global_batch_size} x {args.seq_length} tokens = micro {args.micro_batch_size} x DP "
            f"{args.data_parallel_size} x accumulation {args.grad_accum_steps} | {args.train_iters} iterations from "
            f"{self.iteration}")


def _param_groups(module):
    """Megatron's weight-decay groups: no decay for biases and 1-D parameters (norm weights)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.dim() == 1 else decay).append(param)
    groups = [dict(params=decay, wd_mult=1.0, step=0), dict(params=no_decay, wd_mult=0.0, step=0)]
    return [g for g in groups if g["params"]]


def _record_optimizer_step(optimizer, steps):
    """Mirror the update count into every param group's "step".

    DeepSpeed's elastic ZeRO checkpoints (which let a run resume with another data-parallel size) save and restore
    the optimizer step from param_groups[0]["step"], where DeepSpeed's own Adam keeps it; torch's AdamW keeps its
    step in the per-parameter state (saved with the rest of that state), so the group entry is only this record."""
    for group in optimizer.param_groups:
        group["step"] = steps


def _gather_split_dims(module, num_layers):
    from based_megatron.training.distributed import all_gather_objects
    from based_megatron.training.model import tensor_parallel_split_dims

    merged = {}
    for dims in all_gather_objects(tensor_parallel_split_dims(module, num_layers)):
        merged.update(dims)
    return merged


def _data_parallel_mean(loss):
    from megatron.core import parallel_state

    loss = loss.detach().clone().float()
    torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    return loss.item() / parallel_state.get_data_parallel_world_size()


def _pipe_iterator(micro_batches):
    device = _device()
    for tokens, labels, loss_mask in micro_batches:
        yield tokens.to(device), (labels.to(device), loss_mask.to(device))


def _grad_norm(engine):
    norm = engine.get_global_grad_norm()
    if norm is None:
        return None
    norm = float(norm)
    return norm if math.isfinite(norm) else None


def _latest_tag(save_dir):
    from based_megatron.training.checkpointing import read_latest_tag

    return read_latest_tag(save_dir) or ""
