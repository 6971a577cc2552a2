"""Time `tools/convert_to_hf.py` on a TP x PP training checkpoint of a preset (issue 6: based-1.3b from TP2xPP2).

    python3 bench/conversion.py --config based-1.3b --tp 2 --pp 2 --out DIR [--work-dir W] [--skip-verify]

1. Writes a random-weight checkpoint of the preset in the training layout, without training: TP x PP gloo ranks
   on the CPU (torchrun) build the trainer's own layers (based_megatron.training.model: DeepSpeed PipelineModule
   for PP > 1, else SequentialLM; layers seeded by index as in training) in bf16 and save them as the trainer does:
   DeepSpeed's PipelineModule.save_state_dict (layer_XX-model_YY-model_states.pt) or mp_rank_XX_model_states.pt,
   plus based_checkpoint.json, the byte tokenizer and `latest`. The ZeRO optimizer partitions of a real run are
   not written: the converter does not read them.
2. Runs `python3 tools/convert_to_hf.py --load CKPT --output HF --overwrite` without and with `--verify`, on the
   CPU, and records wall time, peak RSS (of the converter process, from wait4) and the export size.

Writes DIR/conversion.md and DIR/conversion.json (machine, versions, commands). Checkpoint and export go to
--work-dir (default: a temporary directory, deleted at the end).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from multi_gpu import staged_layer_pattern  # noqa: E402  (bench/ is on sys.path when this file runs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="based-1.3b", help="model preset")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the checkpoint")
    parser.add_argument("--pp", type=int, default=2, help="pipeline-parallel size of the checkpoint")
    parser.add_argument("--out", help="results directory (conversion.md, conversion.json, logs)")
    parser.add_argument("--work-dir", default=None, help="checkpoint and export (default: a temporary directory)")
    parser.add_argument("--skip-verify", action="store_true", help="time only the export without --verify")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per converter run")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--write-checkpoint", metavar="DIR", help=argparse.SUPPRESS)  # one rank, under torchrun
    args = parser.parse_args(argv)
    if not args.write_checkpoint and not args.out:
        parser.error("--out is required")
    return args


def cpu_env():
    """Children run on the CPU (also on a GPU machine): CUDA hidden, DeepSpeed's CPU accelerator."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


# ----------------------------------------------------------------------------------------------------------------
# 1. the checkpoint (runs on every rank)


def write_rank_checkpoint(args):
    import torch
    import torch.distributed as dist

    from based_megatron.config import build_config
    from based_megatron.training import checkpointing, distributed
    from based_megatron.training.model import layer_config, tensor_parallel_split_dims

    distributed.initialize_distributed(args.tp, args.pp, args.seed)
    try:
        config = build_config(args.config, tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp,
                              layer_pattern=staged_layer_pattern(args.config, args.pp), bf16=True,
                              params_dtype=torch.bfloat16)
        module = build_module(layer_config(config), args)
        tag_dir = os.path.join(args.write_checkpoint, checkpointing.tag_for_iteration(0))
        if dist.get_rank() == 0:
            os.makedirs(tag_dir)
        dist.barrier()
        save_model_files(module, tag_dir, args)
        split_dims = {}
        for dims in distributed.all_gather_objects(tensor_parallel_split_dims(module, config.num_layers)):
            split_dims.update(dims)
        dist.barrier()
        if dist.get_rank() == 0:
            write_metadata(args.write_checkpoint, tag_dir, config, split_dims, args)
    finally:
        distributed.destroy()


def build_module(config, args):
    """The trainer's layers (Trainer._build_module without activation recompute)."""
    from based_megatron.training.model import SequentialLM, build_pipeline_module

    if args.pp > 1:
        return build_pipeline_module(config, args.pp, args.seed)
    return SequentialLM(config, args.seed)


def save_model_files(module, tag_dir, args):
    """The model files DeepSpeed's engine.save_checkpoint writes for this rank (data-parallel size 1)."""
    import torch
    from megatron.core import parallel_state

    if args.pp > 1:
        from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

        module.checkpoint_parallel_write_pipeline = False  # set by DeepSpeed's PipelineEngine (config default)
        module.save_state_dict(tag_dir, TorchCheckpointEngine())
    else:
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        torch.save({"module": module.state_dict()}, os.path.join(tag_dir, f"mp_rank_{tp_rank:02d}_model_states.pt"))


def write_metadata(save_dir, tag_dir, config, split_dims, args):
    """based_checkpoint.json (the fields Trainer._save writes), the byte tokenizer, then `latest`."""
    from based_megatron.data.tokenizers import build_tokenizer, save_tokenizer
    from based_megatron.training import checkpointing

    meta = dict(format=checkpointing.FORMAT_DEEPSPEED, engine="pipe" if args.pp > 1 else "plain",
                tensor_model_parallel_size=args.tp, pipeline_model_parallel_size=args.pp, data_parallel_size=1,
                zero_stage=1, consumed_samples=0, model=checkpointing.config_to_json(config),
                tensor_parallel_split_dims=split_dims, iteration=0)
    save_tokenizer(build_tokenizer("byte"), os.path.join(tag_dir, checkpointing.TOKENIZER_DIR))
    write_text_atomically(os.path.join(tag_dir, checkpointing.META_FILE), json.dumps(meta, indent=2))
    write_text_atomically(os.path.join(save_dir, checkpointing.LATEST), os.path.basename(tag_dir))


def write_text_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------------------------
# 2. timing


def run_measured(command, log_path, timeout):
    """Run `command` (CPU env); returns (exit code or 'timeout', wall seconds, peak RSS GiB of the process tree
    that the child waited for, from wait4)."""
    start = time.perf_counter()
    timed_out = threading.Event()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=cpu_env(), cwd=REPO)
        timer = threading.Timer(timeout, lambda: (timed_out.set(), process.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return ("timeout" if timed_out.is_set() else process.returncode), seconds, usage.ru_maxrss / 2**20


def directory_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def build_checkpoint(args, ckpt_dir):
    world = args.tp * args.pp
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               os.path.abspath(__file__), "--config", args.config, "--tp", str(args.tp), "--pp", str(args.pp),
               "--seed", str(args.seed), "--write-checkpoint", ckpt_dir]
    print(f"== writing a random {args.config} checkpoint at TP {args.tp} x PP {args.pp} ({world} CPU ranks)",
          flush=True)
    status, seconds, _ = run_measured(command, os.path.join(args.out, "logs", "write_checkpoint.log"), args.timeout)
    if status != 0:
        raise SystemExit(f"conversion.py: writing the checkpoint failed (exit {status}); see "
                         f"{os.path.join(args.out, 'logs', 'write_checkpoint.log')}")
    size = directory_bytes(ckpt_dir)
    print(f"   {size / 2**30:.2f} GiB in {seconds:.0f} s", flush=True)
    return dict(command=display(command), wall_s=round(seconds, 1), bytes=size)


def time_conversion(args, ckpt_dir, hf_dir, verify):
    command = [sys.executable, os.path.join(REPO, "tools", "convert_to_hf.py"), "--load", ckpt_dir, "--output",
               hf_dir, "--overwrite"] + (["--verify"] if verify else [])
    name = "convert_verify" if verify else "convert"
    log_path = os.path.join(args.out, "logs", name + ".log")
    print(f"== {display(command)}", flush=True)
    status, seconds, peak_rss = run_measured(command, log_path, args.timeout)
    with open(log_path) as log:
        tail = [line.strip() for line in log if line.startswith(("wrote", "verify:", "convert_to_hf"))]
    result = dict(verify=verify, command=display(command), exit=status, wall_s=round(seconds, 1),
                  peak_rss_gib=round(peak_rss, 2), output_bytes=directory_bytes(hf_dir) if status == 0 else None,
                  converter_lines=tail)
    print(f"   exit {status}, {seconds:.1f} s, peak RSS {peak_rss:.2f} GiB: {tail}", flush=True)
    return result


def display(command):
    shown = [os.path.relpath(a, REPO) if os.path.isabs(a) and a.startswith(REPO) else a for a in command]
    return " ".join(["python3"] + shown[1:])


# ----------------------------------------------------------------------------------------------------------------
# report


def machine():
    import psutil
    import torch
    import transformers

    return dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                host=platform.node(), cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                ram_gib=round(psutil.virtual_memory().total / 2**30, 1), load_average=os.getloadavg(),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__)


def markdown_report(report, args):
    m = report["machine"]
    lines = [f"# convert_to_hf: {args.config} from TP {args.tp} x PP {args.pp}", "",
             f"{m['date']}, {m['host']}: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, load average at "
             f"start {', '.join(f'{x:.1f}' for x in m['load_average'])}; python {m['python']}, torch {m['torch']}, "
             f"transformers {m['transformers']}. The converter runs on the CPU.", "",
             f"Checkpoint: random weights, bf16, {report['checkpoint']['bytes'] / 2**30:.2f} GiB of model files "
             f"(written in {report['checkpoint']['wall_s']} s; no optimizer partitions).", "",
             "| run | exit | wall time (s) | peak RSS (GiB) | export size (GiB) |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        size = "n/a" if run["output_bytes"] is None else f"{run['output_bytes'] / 2**30:.2f}"
        lines.append(f"| {'with --verify' if run['verify'] else 'export only'} | {run['exit']} | {run['wall_s']} | "
                     f"{run['peak_rss_gib']} | {size} |")
    lines += ["", "Converter output:", "", "```"]
    for run in report["runs"]:
        lines += run["converter_lines"]
    lines += ["```", "", "Commands:", "", "```", "python3 " + " ".join(sys.argv), report["checkpoint"]["command"]]
    lines += [run["command"] for run in report["runs"]] + ["```", ""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.write_checkpoint:
        write_rank_checkpoint(args)
        return 0
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="conversion_")
    ckpt_dir, hf_dir = os.path.join(work_dir, "checkpoint"), os.path.join(work_dir, "hf")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    try:
        report = dict(machine=machine(), args=vars(args), checkpoint=build_checkpoint(args, ckpt_dir), runs=[])
        for verify in (False,) if args.skip_verify else (False, True):
            report["runs"].append(time_conversion(args, ckpt_dir, hf_dir, verify))
        with open(os.path.join(args.out, "conversion.json"), "w") as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(args.out, "conversion.md"), "w") as f:
            f.write(markdown_report(report, args))
        print(f"wrote {os.path.join(args.out, 'conversion.md')} and conversion.json")
        return 0 if all(run["exit"] == 0 for run in report["runs"]) else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
