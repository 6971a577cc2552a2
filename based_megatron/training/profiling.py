"""Megatron-LM's step profiling flags: --profile brackets iterations [--profile-step-start, --profile-step-end) on
--profile-ranks. With --use-pytorch-profiler, torch.profiler records them (host and CUDA activity), writes a trace for
TensorBoard's profiler plugin or Perfetto into --tensorboard-dir and prints the top operators and kernels; without
it, the steps are bracketed by cudaProfilerStart / cudaProfilerStop, for `nsys profile --capture-range=cudaProfilerApi`.
"""

import torch

TOP_ROWS = 30     # rows of each printed operator / kernel table


class StepProfiler:
    def __init__(self, args, rank):
        self.enabled = args.profile and rank in args.profile_ranks
        self.start, self.end = args.profile_step_start, args.profile_step_end
        self.use_torch = args.use_pytorch_profiler
        self.trace_dir = args.tensorboard_dir
        self.rank = rank
        self.torch_profiler = None

    def step_begins(self, iteration):
        """Before the step that takes the model from `iteration` completed steps to iteration + 1."""
        if not self.enabled or iteration != self.start:
            return
        if self.use_torch:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.torch_profiler = torch.profiler.profile(
                activities=activities,
                on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir, worker_name=f"rank{self.rank}"))
            self.torch_profiler.start()
        else:
            torch.cuda.profiler.start()

    def step_ended(self, iteration):
        """After the step that completed `iteration` steps (the device synchronised)."""
        if self.enabled and iteration == self.end:
            self._stop(iteration)

    def finish(self, iteration):
        """The run ends after `iteration` steps: stop a profile still recording (--profile-step-end not reached)."""
        if self.enabled and self.start < iteration < self.end:
            self._stop(iteration)

    def _stop(self, iteration):
        if not self.use_torch:
            torch.cuda.profiler.stop()
            return
        self.torch_profiler.stop()                  # writes the trace (on_trace_ready)
        steps = f"iteration {iteration}" if iteration == self.start + 1 else f"iterations {self.start + 1}-{iteration}"
        print(f"profile of {steps} (rank {self.rank}; trace in {self.trace_dir}: tensorboard --logdir "
              f"{self.trace_dir}, or open its .pt.trace.json in https://ui.perfetto.dev)", flush=True)
        averages = self.torch_profiler.key_averages()
        for sort_by in (["self_cuda_time_total"] if torch.cuda.is_available() else []) + ["self_cpu_time_total"]:
            table = averages.table(sort_by=sort_by, row_limit=TOP_ROWS, max_name_column_width=70)
            print(f"by {sort_by.replace('_', ' ')}:\n{table}", flush=True)
        self.torch_profiler = None
