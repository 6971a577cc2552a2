"""Benchmark tools/preprocess_data.py: end-to-end tokens/s vs the raw tokenizer, scaling, peak memory.

For each tokenizer (byte, and a byte-level BPE trained on the sample corpus as a GPT-2 stand-in:
the GPT-2 files are not on these machines) it measures

- raw: the tokenizer's ``encode_batch`` on the texts of the smallest input, in batches of the
  tool's chunk size, one process, one thread (the practical limit of one worker);
- end to end: the preprocessing tool as a subprocess on inputs of each size (the sample corpus
  repeated), per ``--workers``, timed by the tool (from argument parsing to the committed output;
  the wall time with Python's start-up is recorded too), with the peak RSS of each process of its
  tree and the CPU seconds of the whole tree (sampled every 50 ms);
- CPU efficiency: tokens per CPU second of the whole tree (main, forkserver, workers) as a fraction
  of the raw tokens per CPU second; unlike tokens/s it does not depend on other load on the machine;
- steady state: (tokens of the largest full-grid input - tokens of the smallest) / (time difference),
  i.e. the throughput with the fixed start/finish costs taken out.

Sizes above ``--full-grid-max-mb`` (the 1 GB memory check) run only at the largest worker count.
Inputs are generated once under ``--work-dir`` and reused; each run's output dataset is deleted
when it finishes, so the disk holds the inputs plus one output at a time (the 1 GB case: 1.1 GB
of input, at most 2 GB of byte-tokenizer output). Results (``results.json``, ``results.md``) go to
``--out``.

    python bench/preprocess.py --sizes-mb 10 100 1000 --workers 1 2 4 8 --out OUT
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import version

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from based_megatron.data.preprocess import CHUNK_LINES  # noqa: E402
from based_megatron.data.sample_corpus import iter_sample_documents  # noqa: E402
from based_megatron.data.tokenizer_training import train_bpe  # noqa: E402
from based_megatron.data.tokenizers import build_tokenizer  # noqa: E402

SAMPLE_SECONDS = 0.05


def make_input(path: str, size_mb: int, block: bytes) -> None:
    """``block`` (whole JSONL lines) repeated until the file holds at least ``size_mb`` MB."""
    if os.path.exists(path):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        for _ in range(-(-int(size_mb * 1e6) // len(block))):
            f.write(block)
    os.replace(tmp, path)


def raw_tokens_per_second(tokenizer, texts) -> dict:
    """``encode_batch`` over ``texts`` in batches of the tool's chunk size (faster than one batch of
    all texts: the intermediate encodings of a batch stay small)."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for first in range(0, len(texts), CHUNK_LINES):
        tokens += sum(len(ids) for ids in tokenizer.encode_batch(texts[first:first + CHUNK_LINES]))
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {"tokens": tokens, "seconds": wall, "cpu_seconds": cpu, "tokens_per_s": tokens / wall}


def sample_tree(root: psutil.Process, peaks: dict, cpu_seconds: dict) -> None:
    """Update the RSS peaks (main: the tool, worker: the largest other process, tree: the sum) and
    the CPU seconds (user + system) of every process of the tree so far."""
    try:
        processes = [root, *root.children(recursive=True)]
        rss = [process.memory_info().rss for process in processes]
        for process in processes:
            times = process.cpu_times()
            cpu_seconds[process.pid] = times.user + times.system
    except psutil.Error:
        return
    peaks["main"] = max(peaks["main"], rss[0])
    peaks["worker"] = max([peaks["worker"], *rss[1:]])
    peaks["tree"] = max(peaks["tree"], sum(rss))


def run_tool(input_path: str, out_prefix: str, flags: list, workers: int) -> dict:
    command = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
               input_path, "--output-prefix", out_prefix, "--append-eod", "--quiet",
               "--workers", str(workers), *flags]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peaks, cpu_seconds = psutil.Process(process.pid), {"main": 0, "worker": 0, "tree": 0}, {}
    while process.poll() is None:
        sample_tree(root, peaks, cpu_seconds)
        time.sleep(SAMPLE_SECONDS)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr}")
    done = next(line for line in stdout.splitlines() if line.startswith("done:"))
    input_mb = float(done.split(" documents, ")[1].split(" MB")[0].replace(",", ""))
    tokens = int(done.split(" MB, ")[1].split(" tokens")[0].replace(",", ""))
    seconds = float(done.split(" tokens in ")[1].split(" s ")[0])
    return {"input_mb": input_mb, "tokens": tokens, "tool_seconds": seconds, "wall_seconds": wall,
            "tokens_per_s": tokens / seconds, "cpu_seconds": sum(cpu_seconds.values()),
            "peak_rss_tree_mb": peaks["tree"] / 1e6,
            "peak_rss_main_mb": peaks["main"] / 1e6, "peak_rss_worker_mb": peaks["worker"] / 1e6}


def remove_dataset(prefix: str) -> None:
    document = f"{prefix}_text_document"
    for path in (document + ".bin", document + ".idx"):
        os.remove(path)
    shutil.rmtree(document + ".tokenizer")


def steady_state(runs: list, sizes: list) -> dict:
    """(tokenizer, workers) -> tokens/s between the smallest and the largest of ``sizes``."""
    small, large = min(sizes), max(sizes)
    by_key = {(r["tokenizer"], r["workers"], r["size_mb"]): r for r in runs}
    rates = {}
    for (name, workers, size), run in by_key.items():
        first = by_key.get((name, workers, small))
        if size == large and first and run["tool_seconds"] > first["tool_seconds"]:
            rates[(name, workers)] = ((run["tokens"] - first["tokens"])
                                      / (run["tool_seconds"] - first["tool_seconds"]))
    return rates


def environment() -> dict:
    packages = {}
    for name in ("tokenizers", "numpy", "megatron-core", "torch", "transformers", "psutil"):
        try:
            packages[name] = version(name)
        except Exception:
            packages[name] = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{cpu}, {os.cpu_count()} cores, "
                       f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "packages": packages, "command": " ".join([os.path.relpath(sys.argv[0], REPO),
                                                       *sys.argv[1:]])}


def write_markdown(results: dict, path: str) -> None:
    env = results["environment"]
    lines = [f"Date: {env['date']}. Machine: {env['machine']}. Load average at start: "
             f"{', '.join(f'{x:.1f}' for x in env['load_average_at_start'])}; at end: "
             f"{', '.join(f'{x:.1f}' for x in results['load_average_at_end'])}.",
             f"Python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["packages"].items())
             + ".", f"Command: `python {env['command']}`", ""]
    for name, raw in results["raw"].items():
        lines.append(f"raw {name}: {raw['tokens_per_s']:,.0f} tokens/s ({raw['tokens']:,} tokens, "
                     f"{raw['seconds']:.2f} s wall, {raw['cpu_seconds']:.2f} s CPU)")
    lines += ["", "| tokenizer | input | workers | tool s | wall s | tokens/s | % of raw | "
                  "per worker % of raw | CPU s | CPU efficiency | peak RSS tree | main | "
                  "largest worker |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {r['tokenizer']} | {r['size_mb']} MB | {r['workers']} | "
                     f"{r['tool_seconds']:.1f} | {r['wall_seconds']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{100 * r['fraction_of_raw']:.0f}% | "
                     f"{100 * r['fraction_of_raw'] / r['workers']:.0f}% | "
                     f"{r['cpu_seconds']:.1f} | {100 * r['cpu_efficiency']:.0f}% | "
                     f"{r['peak_rss_tree_mb']:,.0f} MB | {r['peak_rss_main_mb']:,.0f} MB | "
                     f"{r['peak_rss_worker_mb']:,.0f} MB |")
    if results["steady_state"]:
        lines += ["", "Steady state (fixed costs taken out, see the module docstring):", "",
                  "| tokenizer | workers | tokens/s | % of raw | per worker % of raw |",
                  "|---|---|---|---|---|"]
        for s in results["steady_state"]:
            lines.append(f"| {s['tokenizer']} | {s['workers']} | {s['tokens_per_s']:,.0f} | "
                         f"{100 * s['fraction_of_raw']:.0f}% | "
                         f"{100 * s['fraction_of_raw'] / s['workers']:.0f}% |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--full-grid-max-mb", type=int, default=100,
                        help="larger inputs run only at the largest --workers")
    parser.add_argument("--tokenizers", nargs="+", choices=["byte", "bpe"], default=["byte", "bpe"])
    parser.add_argument("--bpe-vocab", type=int, default=50257)
    parser.add_argument("--work-dir", default="/tmp/bench_preprocess_work",
                        help="inputs (kept for reuse) and the output of the current run")
    parser.add_argument("--out", default="/tmp/bench_preprocess", help="results.json, results.md")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    results = {"environment": environment(), "raw": {}, "runs": []}

    documents = [text for _, text in iter_sample_documents()]
    block = "".join(json.dumps({"text": text}) + "\n" for text in documents).encode("utf-8")
    inputs = {}
    for size in args.sizes_mb:
        inputs[size] = os.path.join(args.work_dir, f"corpus_{size}mb.jsonl")
        make_input(inputs[size], size, block)

    tokenizer_flags = {"byte": ["--tokenizer-type", "byte"]}
    if "bpe" in args.tokenizers:
        bpe_dir = os.path.join(args.work_dir, f"bpe{args.bpe_vocab}")
        if not os.path.exists(os.path.join(bpe_dir, "merges.txt")):
            train_bpe(iter(documents), args.bpe_vocab, bpe_dir)
        tokenizer_flags["bpe"] = ["--tokenizer-type", "gpt2bpe", "--vocab-file",
                                  os.path.join(bpe_dir, "vocab.json"), "--merge-file",
                                  os.path.join(bpe_dir, "merges.txt")]

    with open(inputs[min(args.sizes_mb)], "rb") as f:
        smallest = [json.loads(line)["text"] for line in f]
    for name in args.tokenizers:
        flags = tokenizer_flags[name]
        tokenizer = build_tokenizer(**_build_kwargs(flags))
        raw = raw_tokens_per_second(tokenizer, smallest)
        results["raw"][name] = raw
        print(f"{name}: raw encode_batch {raw['tokens_per_s']:,.0f} tokens/s "
              f"(vocab {tokenizer.vocab_size})", flush=True)
        for size in sorted(args.sizes_mb):
            grid = args.workers if size <= args.full_grid_max_mb else [max(args.workers)]
            for workers in grid:
                prefix = os.path.join(args.work_dir, f"out_{name}")
                run = run_tool(inputs[size], prefix, flags, workers)
                remove_dataset(prefix)
                run.update(tokenizer=name, size_mb=size, workers=workers,
                           fraction_of_raw=run["tokens_per_s"] / raw["tokens_per_s"],
                           cpu_efficiency=(run["tokens"] / run["cpu_seconds"])
                           / (raw["tokens"] / raw["cpu_seconds"]))
                results["runs"].append(run)
                print(json.dumps(run), flush=True)

    full_grid = [size for size in args.sizes_mb if size <= args.full_grid_max_mb]
    results["steady_state"] = [
        {"tokenizer": name, "workers": workers, "tokens_per_s": rate,
         "fraction_of_raw": rate / results["raw"][name]["tokens_per_s"]}
        for (name, workers), rate in steady_state(results["runs"], full_grid).items()]
    results["load_average_at_end"] = os.getloadavg()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    write_markdown(results, os.path.join(args.out, "results.md"))
    print(open(os.path.join(args.out, "results.md")).read())


def _build_kwargs(flags: list) -> dict:
    names = {"--tokenizer-type": "tokenizer_type", "--vocab-file": "vocab_file",
             "--merge-file": "merge_file", "--tokenizer-model": "tokenizer_model"}
    return {names[flag]: value for flag, value in zip(flags[0::2], flags[1::2])}


if __name__ == "__main__":
    main()
