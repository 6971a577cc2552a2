"""Megatron-style log lines and TensorBoard scalars (global rank 0 only).

Training, every --log-interval iterations (averages over the interval):
    iteration  120/ 300 | consumed tokens 245760 | loss 2.3141 | lr 2.7e-03 | grad norm 0.412 |
    step time 0.41 s | tokens/s 4995 | TFLOP/s/GPU 0.05 | MFU 2.1% | skipped 0
TensorBoard tags: train/loss, train/lr, train/grad_norm, train/tokens_per_sec, train/tflops_per_gpu, train/mfu,
val/loss, val/ppl (x axis: iteration).
"""

import math


class TrainingLogger:
    def __init__(self, args, train_flops_per_token, peak_tflops, peak_source, is_logging_rank):
        self.args = args
        self.train_flops_per_token = train_flops_per_token
        self.peak_tflops = peak_tflops
        self.is_logging_rank = is_logging_rank
        self.writer = None
        if is_logging_rank and args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=args.tensorboard_dir)
        self._reset()
        self.print(f"MFU is measured against {peak_tflops:.2f} TFLOP/s per device ({peak_source}); "
                   f"{train_flops_per_token / 1e6:.2f} MFLOP per trained token")

    def _reset(self):
        self.losses, self.grad_norms, self.seconds, self.skipped = [], [], 0.0, 0

    def print(self, message):
        if self.is_logging_rank:
            print(message, flush=True)

    def train_step(self, iteration, consumed_tokens, loss, lr, grad_norm, seconds, skipped):
        """Record one iteration; print and write TensorBoard every --log-interval iterations."""
        if skipped:
            self.skipped += 1
        else:
            self.losses.append(loss)
            if grad_norm is not None:
                self.grad_norms.append(grad_norm)
        self.seconds += seconds
        if iteration % self.args.log_interval == 0 or iteration == self.args.train_iters:
            self._emit(iteration, consumed_tokens, lr)

    def _emit(self, iteration, consumed_tokens, lr):
        args = self.args
        steps = len(self.losses) + self.skipped
        step_time = self.seconds / max(steps, 1)
        tokens_per_sec = args.global_batch_size * args.seq_length / step_time
        tflops_per_gpu = tokens_per_sec * self.train_flops_per_token / args.world_size / 1e12
        mfu = tflops_per_gpu / self.peak_tflops
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        grad_norm = sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else float("nan")
        self.print(f" iteration {iteration:6d}/{args.train_iters:6d} | consumed tokens {consumed_tokens:12d} | "
                   f"loss {loss:.4f} | lr {lr:.3e} | grad norm {grad_norm:.3f} | step time {step_time:.3f} s | "
                   f"tokens/s {tokens_per_sec:.0f} | TFLOP/s/GPU {tflops_per_gpu:.3f} | MFU {100 * mfu:.2f}% | "
                   f"skipped {self.skipped}")
        self._scalars(iteration, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                  "train/tokens_per_sec": tokens_per_sec, "train/tflops_per_gpu": tflops_per_gpu,
                                  "train/mfu": mfu})
        self._reset()

    def validation(self, iteration, loss, label="validation"):
        ppl = math.exp(min(loss, 50.0))
        self.print(f" {label} loss at iteration {iteration} | loss {loss:.4f} | perplexity {ppl:.3f}")
        self._scalars(iteration, {"val/loss": loss, "val/ppl": ppl})

    def _scalars(self, iteration, values):
        if self.writer is None:
            return
        for tag, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, iteration)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
