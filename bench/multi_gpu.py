"""Multi-GPU training check (issue 7): every parallel layout that fits N GPUs against a one-GPU run.

    python3 bench/multi_gpu.py --gpus 4 --out DIR          # on nvidia-h200-x4: TP2xPP2, DP4, TP2xDP2 (ZeRO-1)
    python3 bench/multi_gpu.py --gpus 2 --out DIR          # on nvidia-h200-x2: TP2, PP2, DP2 (ZeRO-1)
    python3 bench/multi_gpu.py --device cpu --gpus 2 --model based-tiny --seq-length 128 --steps 4 --out DIR

One run after the other through the DeepSpeed launcher (`python3 -m deepspeed.launcher.runner --num_gpus G
examples/pretrain_based.sh ...`), all on the same byte-tokenized sample corpus, global batch, seed, precision and
optimizer settings (the embedded default's): first the one-GPU reference, then each layout. Per-step losses,
tokens/s and MFU come from the trainer's log lines (--log-interval 1); peak memory per GPU is sampled from
nvidia-smi (memory.used: allocator cache + CUDA context) or, with --device cpu, the peak RSS of each rank, and the
trainer's closing line gives PyTorch's peak allocated / reserved memory per rank (GPU runs).
The layout marked `save` writes a checkpoint that `tools/convert_to_hf.py --verify` then exports (on the CPU).

Writes DIR/multi_gpu.md (table + commands), DIR/multi_gpu.json and DIR/logs/*.log. Checkpoints and the HF export
go to --work-dir (default: a temporary directory, deleted at the end) so that DIR stays small.
NVLink multicast stays off in every child (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1).
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NO_MULTICAST_ENV = dict(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
# the embedded default's optimizer settings (based_megatron.training.arguments.EMBEDDED_DEFAULTS), as flags
OPTIMIZER_SETTINGS = ("lr", "min_lr", "lr_warmup_iters", "lr_decay_style", "weight_decay", "adam_beta1",
                      "adam_beta2", "clip_grad", "split")
ITERATION_LINE = re.compile(
    r"iteration\s+(?P<iteration>\d+)/\s*\d+ \| consumed tokens\s+\d+ \| loss (?P<loss>\S+) \| lr \S+ \| "
    r"grad norm \S+ \| step time (?P<step_time>\S+) s \| tokens/s (?P<tokens_per_sec>\S+) \| "
    r"TFLOP/s/GPU (?P<tflops>\S+) \| MFU (?P<mfu>\S+)% \| skipped (?P<skipped>\d+)")
VERIFY_LINE = re.compile(r"verify: (?P<what>.+?), relative difference (?P<difference>[0-9.eE+-]+)")
PEAK_MEMORY_LINE = re.compile(r"peak memory per rank \(GiB allocated / reserved\): (?P<ranks>.+)")
RANK_MEMORY = re.compile(r"(?P<rank>\d+): (?P<allocated>[0-9.]+) / (?P<reserved>[0-9.]+)")


@dataclasses.dataclass
class Layout:
    name: str
    gpus: int
    tp: int = 1
    pp: int = 1
    save: bool = False  # this run writes the checkpoint that is converted to HF

    @property
    def dp(self):
        return self.gpus // (self.tp * self.pp)


def layouts_for(gpus):
    """The one-GPU reference, then the layouts of issue 7 that fit `gpus` (2 or 4)."""
    layouts = {4: [Layout("TP2xPP2", 4, tp=2, pp=2, save=True), Layout("DP4", 4), Layout("TP2xDP2", 4, tp=2)],
               2: [Layout("TP2", 2, tp=2, save=True), Layout("PP2", 2, pp=2), Layout("DP2", 2)]}
    return [Layout("1 GPU (reference)", 1)] + layouts[gpus]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, required=True, choices=(2, 4), help="GPUs (CPU ranks) per layout")
    parser.add_argument("--out", required=True, help="results directory (markdown, json, logs)")
    parser.add_argument("--work-dir", default=None,
                        help="data, checkpoints and the HF export (default: a temporary directory, deleted)")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                        help="cpu: ranks on CPU cores with gloo (smoke test)")
    parser.add_argument("--model", default="based-360m")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-length", type=int, default=2048)
    parser.add_argument("--global-batch-size", type=int, default=8, help="sequences per step, every layout")
    parser.add_argument("--pipeline-micro-batches", type=int, default=4,
                        help="micro-batches per step with PP > 1 (else one micro-batch per data-parallel rank)")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--vocab-size", type=int, default=50257,
                        help="embedding size (GPT-2's by default, as the one-GPU baseline); 0: the byte "
                             "tokenizer's own")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--warmup-steps", type=int, default=5,
                        help="steps left out of the throughput median (compilation, allocator warm-up)")
    parser.add_argument("--loss-rtol", type=float, default=2e-2,
                        help="per-step |loss - reference| / reference allowed (bf16 noise; 1e-4 for fp32)")
    parser.add_argument("--repeat-reference", action="store_true",
                        help="run the one-GPU reference twice: its self-difference is the noise floor")
    parser.add_argument("--run-timeout", type=int, default=90, help="seconds per training run")
    parser.add_argument("--convert-timeout", type=int, default=150, help="seconds for convert_to_hf --verify")
    parser.add_argument("--skip-convert", action="store_true")
    args = parser.parse_args(argv)
    if args.global_batch_size % args.gpus:
        parser.error(f"--global-batch-size {args.global_batch_size} must be a multiple of --gpus {args.gpus}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# one training run


def micro_batch_size(layout, args):
    per_rank = args.global_batch_size // layout.dp
    if layout.pp > 1:
        if per_rank % args.pipeline_micro_batches:
            raise SystemExit(f"multi_gpu.py: {layout.name}: {per_rank} sequences per data-parallel rank do not split "
                             f"into --pipeline-micro-batches {args.pipeline_micro_batches}")
        return per_rank // args.pipeline_micro_batches
    return per_rank


def staged_layer_pattern(preset, pp):
    """The preset's layer pattern with '|' stage marks when its layers do not split evenly into `pp` stages
    (based-360m: 27 layers -> 14 | 13; the config refuses an uneven split without marks); else None."""
    from based_megatron.config import STAGE_SEPARATOR, build_config

    symbols = build_config(preset).layer_symbols
    if pp == 1 or len(symbols) % pp == 0:
        return None
    base, extra = divmod(len(symbols), pp)
    sizes = [base + (stage < extra) for stage in range(pp)]
    bounds = [sum(sizes[:stage]) for stage in range(pp + 1)]
    return STAGE_SEPARATOR.join(symbols[bounds[i]:bounds[i + 1]] for i in range(pp))


def training_command(layout, args, data_prefix, save_dir):
    from based_megatron.training.arguments import EMBEDDED_DEFAULTS

    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(layout.gpus),
               "--master_port", str(free_port()), os.path.join(REPO, "examples", "pretrain_based.sh"),
               "--model", args.model, "--data-path", data_prefix, "--seq-length", str(args.seq_length),
               "--tensor-model-parallel-size", str(layout.tp), "--pipeline-model-parallel-size", str(layout.pp),
               "--zero-stage", "1", "--micro-batch-size", str(micro_batch_size(layout, args)),
               "--global-batch-size", str(args.global_batch_size), "--train-iters", str(args.steps),
               "--seed", str(args.seed), "--log-interval", "1", "--eval-iters", "0"]
    settings = dict(EMBEDDED_DEFAULTS, lr_warmup_iters=min(EMBEDDED_DEFAULTS["lr_warmup_iters"], args.steps // 3))
    for setting in OPTIMIZER_SETTINGS:
        command += ["--" + setting.replace("_", "-"), str(settings[setting])]
    if args.dtype == "bf16":
        command.append("--bf16")
    if args.vocab_size:
        command += ["--vocab-size", str(args.vocab_size)]
    pattern = staged_layer_pattern(args.model, layout.pp)
    if pattern:
        command += ["--layer-pattern", pattern]
    if save_dir:
        command += ["--save", save_dir]
    return command


def child_env(args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **NO_MULTICAST_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_with_timeout(command, log_path, env, timeout, sampler=None):
    """Run `command` in its own process group, output to `log_path`; (exit code or 'timeout', seconds)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        if sampler:
            sampler.start(process.pid)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process_group(process)
            status = "timeout"
        finally:
            if sampler:
                sampler.stop()
    return status, time.perf_counter() - start


def stop_process_group(process):
    """SIGTERM the run's process group (the trainer saves and exits), SIGKILL what is left after 30 s."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class MemorySampler:
    """Peak memory per device while a run lasts: nvidia-smi memory.used per GPU, or RSS per rank on CPU (GiB)."""

    def __init__(self, device, count, interval=0.5):
        self.device, self.count, self.interval = device, count, interval
        self.peak = [0.0] * count
        self._done = threading.Event()
        self._thread = None

    def start(self, launcher_pid):
        self._thread = threading.Thread(target=self._loop, args=(launcher_pid,), daemon=True)
        self._thread.start()

    def stop(self):
        self._done.set()
        self._thread.join()

    def _loop(self, launcher_pid):
        while not self._done.wait(self.interval):
            readings = self._gpu_readings() if self.device == "gpu" else self._rank_rss(launcher_pid)
            for index, gib in readings.items():
                if index < self.count:
                    self.peak[index] = max(self.peak[index], gib)

    @staticmethod
    def _gpu_readings():
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        readings = {}
        for line in out.strip().splitlines():
            index, mib = (field.strip() for field in line.split(","))
            readings[int(index)] = int(mib) / 1024
        return readings

    @staticmethod
    def _rank_rss(launcher_pid):
        import psutil

        readings = {}
        try:
            children = psutil.Process(launcher_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return readings
        for child in children:
            try:
                local_rank = [a for a in child.cmdline() if a.startswith("--local_rank=")]
                if local_rank:
                    readings[int(local_rank[0].split("=", 1)[1])] = child.memory_info().rss / 2**30
            except psutil.NoSuchProcess:
                continue
        return readings


def parse_training_log(text):
    """[{iteration, loss, step_time, tokens_per_sec, tflops, mfu, skipped}] from the trainer's per-step lines."""
    steps = []
    for match in ITERATION_LINE.finditer(text):
        row = {key: float(value) for key, value in match.groupdict().items()}
        row["iteration"], row["skipped"] = int(row["iteration"]), int(row["skipped"])
        steps.append(row)
    return steps


def parse_peak_memory(text):
    """[(allocated, reserved) GiB per rank] from the trainer's last line (GPU runs), or [] when it did not print it."""
    lines = PEAK_MEMORY_LINE.findall(text)
    if not lines:
        return []
    ranks = sorted((int(m["rank"]), float(m["allocated"]), float(m["reserved"]))
                   for m in RANK_MEMORY.finditer(lines[-1]))
    return [(allocated, reserved) for _, allocated, reserved in ranks]


def first_error(text):
    """The first line of a failed run's log that reports an error (the trainer's message or a traceback's end)."""
    for line in text.splitlines():
        if "error:" in line.lower() or re.match(r"\w*(Error|Exception)\b", line.strip()):
            return line.strip()[:300]
    return None


def steady_steps(total_steps, warmup):
    """Steps left out of the throughput median: `warmup`, or the first half of a shorter run."""
    return min(warmup, total_steps // 2)


def steady_median(steps, key, warmup):
    values = [s[key] for s in steps[steady_steps(len(steps), warmup):]]
    return statistics.median(values) if values else None


def run_layout(layout, args, data_prefix, work_dir, label):
    save_dir = os.path.join(work_dir, "checkpoint_" + label) if layout.save else None
    command = training_command(layout, args, data_prefix, save_dir)
    log_path = os.path.join(args.out, "logs", label + ".log")
    sampler = MemorySampler(args.device, layout.gpus)
    print(f"== {layout.name}: {layout.gpus} x {args.device}, TP {layout.tp} x PP {layout.pp} x DP {layout.dp}",
          flush=True)
    status, seconds = run_with_timeout(command, log_path, child_env(args), args.run_timeout, sampler)
    with open(log_path) as log:
        text = log.read()
    steps = parse_training_log(text)
    result = dict(layout=dataclasses.asdict(layout), dp=layout.dp, label=label,
                  micro_batch_size=micro_batch_size(layout, args), command=display_command(command),
                  exit=status, wall_s=round(seconds, 1), steps=steps,
                  peak_memory_gib=[round(m, 2) for m in sampler.peak],
                  torch_peak_memory_gib=parse_peak_memory(text),
                  tokens_per_sec=steady_median(steps, "tokens_per_sec", args.warmup_steps),
                  tflops_per_gpu=steady_median(steps, "tflops", args.warmup_steps),
                  mfu_percent=steady_median(steps, "mfu", args.warmup_steps), checkpoint=save_dir,
                  error=first_error(text) if status != 0 else None)
    result["tokens_per_sec_per_gpu"] = result["tokens_per_sec"] / layout.gpus if result["tokens_per_sec"] else None
    print(f"   exit {status} after {seconds:.0f} s, {len(steps)}/{args.steps} steps logged, "
          f"tokens/s {result['tokens_per_sec']}, peak memory {result['peak_memory_gib']} GiB"
          + (f"\n   {result['error']}" if result["error"] else ""), flush=True)
    return result


def display_command(command):
    """The launch line with paths relative to the repository (as a user types it)."""
    shown = [os.path.relpath(a, REPO) if os.path.isabs(a) and a.startswith(REPO) else a for a in command]
    return " ".join(["python3"] + shown[1:])


# ----------------------------------------------------------------------------------------------------------------
# comparison and HF conversion


def compare_losses(run, reference, rtol):
    """Max |loss - reference loss| (absolute and relative) over the steps both runs logged."""
    ref = {s["iteration"]: s["loss"] for s in reference["steps"]}
    pairs = [(s["loss"], ref[s["iteration"]]) for s in run["steps"] if s["iteration"] in ref]
    if not pairs:
        return dict(compared_steps=0, max_abs_loss_diff=None, max_rel_loss_diff=None, losses_match=False)
    abs_diff = max(loss_difference(a, b) for a, b in pairs)
    rel_diff = max(loss_difference(a, b) / abs(b) if math.isfinite(b) else loss_difference(a, b) for a, b in pairs)
    return dict(compared_steps=len(pairs), max_abs_loss_diff=abs_diff, max_rel_loss_diff=rel_diff,
                losses_match=rel_diff <= rtol and len(pairs) == len(reference["steps"]))


def loss_difference(loss, reference):
    """|loss - reference|; a non-finite loss (a skipped step) differs infinitely unless both are non-finite."""
    if math.isfinite(loss) and math.isfinite(reference):
        return abs(loss - reference)
    return 0.0 if math.isfinite(loss) == math.isfinite(reference) else math.inf


def convert_checkpoint(run, args, work_dir):
    """tools/convert_to_hf.py --verify on the run's checkpoint, on the CPU (as in CI)."""
    output = os.path.join(work_dir, "hf_" + run["label"])
    command = [sys.executable, os.path.join(REPO, "tools", "convert_to_hf.py"), "--load", run["checkpoint"],
               "--output", output, "--verify", "--overwrite"]
    env = dict(child_env(args), CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu")
    log_path = os.path.join(args.out, "logs", "convert_to_hf.log")
    print(f"== convert_to_hf --verify of the {run['layout']['name']} checkpoint", flush=True)
    status, seconds = run_with_timeout(command, log_path, env, args.convert_timeout)
    with open(log_path) as log:
        text = log.read()
    verified = [dict(what=m["what"], relative_difference=float(m["difference"])) for m in VERIFY_LINE.finditer(text)]
    print(f"   exit {status} after {seconds:.0f} s: {verified}", flush=True)
    return dict(source=run["layout"]["name"], command=display_command(command), exit=status, wall_s=round(seconds, 1),
                verify=verified, ok=status == 0 and len(verified) == 2)


# ----------------------------------------------------------------------------------------------------------------
# report


def environment(args):
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name, module in (("deepspeed", "deepspeed"), ("megatron-core", "megatron.core"),
                         ("transformers", "transformers"), ("triton", "triton")):
        try:
            versions[name] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            versions[name] = "not installed"
    device = f"{os.cpu_count()} CPU cores (gloo)"
    if args.device == "gpu":
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip().splitlines()
        device = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU found by nvidia-smi"
    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                host=platform.node(), device=device, versions=versions)


def fmt(value, spec):
    return "n/a" if value is None else format(value, spec)


def markdown_report(report, args):
    env, ref = report["environment"], report["runs"][0]
    ref_tps = ref["tokens_per_sec"]
    devices = "GPUs" if args.device == "gpu" else "CPU ranks"
    lines = [f"# Multi-GPU training: {args.model}, {args.gpus} {devices}", "",
             f"{env['date']}, {env['device']}, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
             f"{args.dtype}, seq {args.seq_length}, global batch {args.global_batch_size} sequences, {args.steps} "
             f"steps, seed {args.seed}, ZeRO-1, the byte-tokenized sample corpus (embedding of "
             f"{args.vocab_size or 'the byte'} vocabulary), the embedded default's optimizer settings. Throughput: "
             f"median over steps {steady_steps(args.steps, args.warmup_steps) + 1}-{args.steps}; efficiency = "
             "tokens/s per GPU / one-GPU tokens/s. Peak memory: "
             + ("nvidia-smi memory.used per GPU (allocator cache + CUDA context)." if args.device == "gpu"
                else "peak RSS per rank."),
             f"Loss tolerance: per-step relative difference <= {args.loss_rtol:g} against the one-GPU run.", "",
             "| layout | GPUs | TP | PP | DP | micro x accum | exit | max abs (rel) loss diff | losses match | "
             "tokens/s | tokens/s/GPU | efficiency | TFLOP/s/GPU | MFU % | peak memory per GPU (GiB) | "
             "PyTorch peak allocated / reserved per rank (GiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        layout = run["layout"]
        accum = args.global_batch_size // (run["micro_batch_size"] * run["dp"])
        efficiency = (run["tokens_per_sec_per_gpu"] / ref_tps
                      if run["tokens_per_sec_per_gpu"] and ref_tps else None)
        diff = ("(reference)" if run is ref else
                f"{fmt(run['max_abs_loss_diff'], '.4f')} ({fmt(run['max_rel_loss_diff'], '.2e')})")
        match = "" if run is ref else ("yes" if run["losses_match"] else "**no**")
        lines.append(f"| {layout['name']} | {layout['gpus']} | {layout['tp']} | {layout['pp']} | {run['dp']} | "
                     f"{run['micro_batch_size']} x {accum} | {run['exit']} | {diff} | {match} | "
                     f"{fmt(run['tokens_per_sec'], '.0f')} | {fmt(run['tokens_per_sec_per_gpu'], '.0f')} | "
                     f"{fmt(efficiency, '.2f')} | {fmt(run['tflops_per_gpu'], '.3g')} | "
                     f"{fmt(run['mfu_percent'], '.2f')} | "
                     f"{' / '.join(f'{m:.1f}' for m in run['peak_memory_gib'])} | "
                     f"{', '.join(f'{a:.2f} / {r:.2f}' for a, r in run.get('torch_peak_memory_gib', [])) or '-'} |")
    lines += ["", "Per-step losses:", "", "| step | " + " | ".join(r["layout"]["name"] for r in report["runs"]) + " |",
              "|---|" + "---|" * len(report["runs"])]
    for step in range(1, args.steps + 1):
        cells = []
        for run in report["runs"]:
            loss = next((s["loss"] for s in run["steps"] if s["iteration"] == step), None)
            cells.append(fmt(loss, ".4f"))
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    failed = [run for run in report["runs"] if run["exit"] != 0]
    if failed:
        lines += ["", "Failed runs (logs/<label>.log):", ""]
        lines += [f"- {run['layout']['name']} ({run['label']}): exit {run['exit']}: {run['error']}" for run in failed]
    conversion = report.get("conversion")
    if conversion:
        lines += ["", f"HF export of the {conversion['source']} checkpoint: exit {conversion['exit']}, "
                      f"{conversion['wall_s']} s, " + ("**OK**" if conversion["ok"] else "**FAILED**") + ": "
                  + "; ".join(f"{v['what']}: relative difference {v['relative_difference']:.2e}"
                              for v in conversion["verify"])]
    lines += ["", "Commands:", "", "```", "python3 " + " ".join(sys.argv)]
    lines += [run["command"] for run in report["runs"]]
    if conversion:
        lines.append(conversion["command"])
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="multi_gpu_")
    os.makedirs(work_dir, exist_ok=True)
    try:
        from based_megatron.data.sample_corpus import ensure_sample_dataset

        data_prefix = ensure_sample_dataset(os.path.join(work_dir, "data"))
        layouts = layouts_for(args.gpus)
        if args.repeat_reference:
            layouts.insert(1, dataclasses.replace(layouts[0], name="1 GPU (repeat)"))
        runs = []
        for index, layout in enumerate(layouts):
            if args.skip_convert:
                layout.save = False
            run = run_layout(layout, args, data_prefix, work_dir, label=f"{index}_{slug(layout.name)}")
            if runs:
                run.update(compare_losses(run, runs[0], args.loss_rtol))
            runs.append(run)
        report = dict(environment=environment(args), args=vars(args), runs=runs)
        saved = [r for r in runs if r["layout"]["save"] and r["checkpoint"] and os.path.isdir(r["checkpoint"])]
        if saved:
            report["conversion"] = convert_checkpoint(saved[0], args, work_dir)
        with open(os.path.join(args.out, "multi_gpu.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "multi_gpu.md"), "w") as f:
            f.write(markdown_report(report, args))
        print(f"wrote {os.path.join(args.out, 'multi_gpu.md')} and multi_gpu.json")
        ok = all(r["exit"] == 0 for r in runs) and all(r.get("losses_match", True) for r in runs)
        return 0 if ok and report.get("conversion", {}).get("ok", True) else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def slug(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


if __name__ == "__main__":
    sys.exit(main())
