"""Benchmark tools/preprocess_data.py: end-to-end tokens/s vs the raw tokenizer, and peak memory.

For each tokenizer (byte, and a byte-level BPE trained on the sample corpus as a GPT-2 stand-in:
the GPT-2 files are not on these machines) it measures

- raw: ``tokenizer.encode_batch`` on the texts of the smallest input, one process, one thread
  (the practical limit of one worker);
- end to end: the preprocessing tool on inputs of each size (the sample corpus repeated), per
  ``--workers``, with the peak RSS summed over the tool's process tree (sampled every 50 ms).

Usage: python bench/preprocess.py --sizes-mb 10 100 --workers 1 2 --out bench/results
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from based_megatron.data.sample_corpus import iter_sample_documents  # noqa: E402
from based_megatron.data.tokenizer_training import train_bpe  # noqa: E402
from based_megatron.data.tokenizers import build_tokenizer  # noqa: E402


def make_input(path: str, size_mb: int, lines: list) -> None:
    if os.path.exists(path) and os.path.getsize(path) >= size_mb * 1e6:
        return
    with open(path, "w") as f:
        written = 0
        while written < size_mb * 1e6:
            for line in lines:
                f.write(line)
                written += len(line)


def raw_tokens_per_second(tokenizer, texts) -> float:
    start = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    return tokens / (time.perf_counter() - start)


def run_tool(input_path: str, out_prefix: str, flags: list, workers: int) -> dict:
    command = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
               input_path, "--output-prefix", out_prefix, "--append-eod", "--quiet",
               "--workers", str(workers), *flags]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree, peak_rss, peak_main = psutil.Process(process.pid), 0, 0
    while process.poll() is None:
        try:
            procs = [tree] + tree.children(recursive=True)
            rss = [p.memory_info().rss for p in procs]
            peak_rss, peak_main = max(peak_rss, sum(rss)), max(peak_main, rss[0])
        except psutil.Error:
            pass
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(stderr)
    done = next(line for line in stdout.splitlines() if line.startswith("done:"))
    tokens = int(done.split(" MB, ")[1].split(" tokens")[0].replace(",", ""))
    seconds = float(done.split(" tokens in ")[1].split(" s ")[0])
    return {"tokens": tokens, "tool_seconds": seconds, "wall_seconds": time.perf_counter() - start,
            "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_rss / 1e6,
            "peak_main_rss_mb": peak_main / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokenizers", nargs="+", default=["byte", "bpe"])
    parser.add_argument("--bpe-vocab", type=int, default=50257)
    parser.add_argument("--out", default="/tmp/bench_preprocess")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    documents = [text for _, text in iter_sample_documents()]
    lines = [json.dumps({"text": text}) + "\n" for text in documents]
    inputs = {}
    for size in args.sizes_mb:
        inputs[size] = os.path.join(args.out, f"corpus_{size}mb.jsonl")
        make_input(inputs[size], size, lines)

    tokenizer_flags = {"byte": ["--tokenizer-type", "byte"]}
    if "bpe" in args.tokenizers:
        bpe_dir = os.path.join(args.out, "bpe")
        if not os.path.exists(os.path.join(bpe_dir, "vocab.json")):
            train_bpe(iter(documents), args.bpe_vocab, bpe_dir)
        tokenizer_flags["bpe"] = ["--tokenizer-type", "gpt2bpe", "--vocab-file",
                                  os.path.join(bpe_dir, "vocab.json"), "--merge-file",
                                  os.path.join(bpe_dir, "merges.txt")]

    smallest = [json.loads(line)["text"] for line in open(inputs[min(args.sizes_mb)])]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
               "python": platform.python_version(), "runs": []}
    for name in args.tokenizers:
        flags = tokenizer_flags[name]
        tokenizer = build_tokenizer(**_build_kwargs(flags))
        raw = raw_tokens_per_second(tokenizer, smallest)
        print(f"{name}: raw encode_batch {raw:,.0f} tokens/s (vocab {tokenizer.vocab_size})",
              flush=True)
        for size in args.sizes_mb:
            for workers in args.workers:
                run = run_tool(inputs[size], os.path.join(args.out, f"out_{name}"), flags, workers)
                run.update(tokenizer=name, size_mb=size, workers=workers, raw_tokens_per_s=raw,
                           fraction_of_raw=run["tokens_per_s"] / raw)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)


def _build_kwargs(flags: list) -> dict:
    names = {"--tokenizer-type": "tokenizer_type", "--vocab-file": "vocab_file",
             "--merge-file": "merge_file", "--tokenizer-model": "tokenizer_model"}
    return {names[flag]: value for flag, value in zip(flags[0::2], flags[1::2])}


if __name__ == "__main__":
    main()
