"""JSONL -> Megatron indexed datasets (the engine behind ``tools/preprocess_data.py``).

Pipeline: the main process streams raw lines from each input in order and hands chunks of lines to
a pool of ``--workers`` processes (parse + validate + tokenize); results are written back in input
order by megatron-core's builder, so the output bytes do not depend on ``--workers``. At most
``2 * workers + 2`` chunks are in flight, so memory stays flat whatever the input size.
``--partitions P`` runs P such pipelines side by side on contiguous groups of input files and merges
their outputs in order (same bytes as one partition).
"""

import argparse
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Dict, List, Optional, Sequence

import numpy

from based_megatron.data.indexed import (
    AtomicDatasetWriter,
    IndexedDatasetError,
    check_indexed_dataset,
)
from based_megatron.data.jsonl import (
    BAD_INPUT_CLASSES,
    BadInput,
    check_input_file,
    iter_line_chunks,
    parse_line,
)
from based_megatron.data.tokenizers import (
    TOKENIZER_TYPES,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    token_dtype,
)

CHUNK_LINES = 512
CHUNK_BYTES = 4 << 20
MAX_REPORTED_BAD_LINES = 20


@dataclass
class PreprocessStats:
    documents: int = 0
    input_bytes: int = 0
    tokens: int = 0
    bad: Counter = field(default_factory=Counter)

    def add(self, other: "PreprocessStats") -> None:
        self.documents += other.documents
        self.input_bytes += other.input_bytes
        self.tokens += other.tokens
        self.bad.update(other.bad)


@dataclass
class ChunkResult:
    documents: int
    input_bytes: int
    tokens: Dict[str, numpy.ndarray]  # key -> concatenated ids
    lengths: Dict[str, numpy.ndarray]  # key -> per-document lengths
    bad: List[BadInput]


# ------------------------------------------------------------------------------- worker side

_worker: dict = {}


def _init_worker(args: argparse.Namespace, dtype, main_pid: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    threading.Thread(target=_exit_when_gone, args=(main_pid,), daemon=True).start()
    _worker.update(tokenizer=_build_tokenizer(args), keys=args.json_keys, dtype=dtype,
                   append_eod=args.append_eod, stop_at_bad=not args.skip_bad_lines)


def _exit_when_gone(pid: int) -> None:
    """Workers never outlive the main process (after a kill -9 they would wait forever)."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)


def _worker_context():
    """forkserver: workers fork from a clean single-threaded server (never from a caller that may
    run torch/gloo/tokenizers threads), and only the first pool of a process pays its start-up."""
    context = get_context("forkserver")
    context.set_forkserver_preload(["based_megatron.data.preprocess"])
    return context


def encode_chunk(path: str, first_line: int, lines: List[bytes]) -> ChunkResult:
    """Parse, validate and tokenize one chunk of lines (runs in a worker)."""
    tokenizer: Tokenizer = _worker["tokenizer"]
    keys = _worker["keys"]
    texts: Dict[str, List[str]] = {key: [] for key in keys}
    bad, input_bytes = [], 0
    for offset, raw in enumerate(lines):
        try:
            record = parse_line(raw, keys, path, first_line + offset)
        except BadInput as error:
            bad.append(error)
            if _worker["stop_at_bad"]:
                break
            continue
        input_bytes += len(raw)
        for key in keys:
            texts[key].append(record[key])
    tokens, lengths = {}, {}
    for key in keys:
        tokens[key], lengths[key] = _encode_documents(tokenizer, texts[key])
    return ChunkResult(len(texts[keys[0]]), input_bytes, tokens, lengths, bad)


def _encode_documents(tokenizer: Tokenizer, texts: List[str]):
    dtype = _worker["dtype"]
    tokens, lengths = tokenizer.encode_concatenated(texts, dtype)
    if _worker["append_eod"]:
        # one EOD after each document: insert at the cumulative document ends
        tokens = numpy.insert(tokens, numpy.cumsum(lengths), numpy.array(tokenizer.eod, dtype=dtype))
        lengths = lengths + 1
    return tokens, lengths


# --------------------------------------------------------------------------------- main side


class Progress:
    """A tqdm bar on a terminal, plain log lines every ``log_interval`` documents otherwise."""

    def __init__(self, label: str, log_interval: int, quiet: bool) -> None:
        self.label, self.log_interval, self.quiet = label, log_interval, quiet
        self.stats = PreprocessStats()
        self.start = time.monotonic()
        self.next_log = log_interval
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=label, unit=" docs", dynamic_ncols=True, file=sys.stderr)

    def rates(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        s = self.stats
        return (f"{s.documents / elapsed:,.0f} docs/s, {s.input_bytes / elapsed / 1e6:,.2f} MB/s, "
                f"{s.tokens / elapsed:,.0f} tokens/s")

    def update(self, result: ChunkResult) -> None:
        self.stats.documents += result.documents
        self.stats.input_bytes += result.input_bytes
        self.stats.tokens += int(sum(len(t) for t in result.tokens.values()))
        if self.bar is not None:
            self.bar.update(result.documents)
            elapsed = max(time.monotonic() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.stats.input_bytes / elapsed / 1e6:.2f} MB/s, "
                                     f"{self.stats.tokens / elapsed:,.0f} tok/s", refresh=False)
        elif not self.quiet and self.stats.documents >= self.next_log:
            log(f"{self.label}: {self.stats.documents:,} documents ({self.rates()})")
            self.next_log = (self.stats.documents // self.log_interval + 1) * self.log_interval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build_tokenizer(args: argparse.Namespace) -> Tokenizer:
    return build_tokenizer(args.tokenizer_type, tokenizer_model=args.tokenizer_model,
                           vocab_file=args.vocab_file, merge_file=args.merge_file,
                           eod_token=args.eod_token)


def output_prefix_for_key(output_prefix: str, key: str) -> str:
    return f"{output_prefix}_{key}_document"


class _BadInputHandler:
    """Stops on the first problem, or with --skip-bad-lines counts and reports them by class."""

    def __init__(self, skip: bool, stats: PreprocessStats) -> None:
        self.skip, self.stats, self.reported = skip, stats, 0

    def __call__(self, error: BadInput) -> None:
        if not self.skip:
            raise error
        self.stats.bad[error.kind] += 1
        if self.reported < MAX_REPORTED_BAD_LINES:
            log(f"skipped: {error}")
        elif self.reported == MAX_REPORTED_BAD_LINES:
            log("skipped: ... (further problems are only counted)")
        self.reported += 1


class _InterruptLatch:
    """Ctrl-C stops the run before anything is committed, even when a library catches the KeyboardInterrupt it
    raises (an import interrupted half-way can swallow it): the SIGINT handler also sets a flag, which every
    chunk written and every commit check."""

    def __init__(self):
        self.interrupted = False
        self.previous = None

    def __enter__(self):
        self.interrupted = False
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt


_INTERRUPTS = _InterruptLatch()


def _tokenize_files(files: Sequence[str], output_prefix: str, args: argparse.Namespace,
                    tokenizer: Tokenizer, label: str, record_tokenizer: bool) -> PreprocessStats:
    """One pipeline: files (in order) -> ``output_prefix_<key>_document`` datasets."""
    progress = Progress(label, args.log_interval, args.quiet)
    on_bad = _BadInputHandler(args.skip_bad_lines, progress.stats)
    dtype = token_dtype(tokenizer.vocab_size)
    # a worker that dies (OOM kill) fails the run with BrokenProcessPool instead of hanging it
    pool = ProcessPoolExecutor(args.workers, mp_context=_worker_context(),
                               initializer=_init_worker, initargs=(args, dtype, os.getpid()))
    pending: deque = deque()
    max_pending = 2 * args.workers + 2
    writers: Dict[str, AtomicDatasetWriter] = {}

    def open_writers() -> None:
        """Opened once the first chunks are submitted: the writers' start-up (saving the tokenizer,
        which imports transformers) then overlaps the workers' start and first chunks."""
        for key in args.json_keys:
            writers[key] = AtomicDatasetWriter(output_prefix_for_key(output_prefix, key), dtype,
                                               tokenizer if record_tokenizer else None)

    def write_oldest() -> None:
        if not writers:
            open_writers()
        result: ChunkResult = pending.popleft().result()
        for error in result.bad:
            on_bad(error)
        for key, writer in writers.items():
            writer.builder.add_documents(result.tokens[key], result.lengths[key])
        progress.update(result)
        _INTERRUPTS.check()

    try:
        for path in files:
            try:
                check_input_file(path)
                for first_line, lines in iter_line_chunks(path, args.chunk_lines, CHUNK_BYTES):
                    pending.append(pool.submit(encode_chunk, path, first_line, lines))
                    while len(pending) >= max_pending:
                        write_oldest()
            except BadInput as error:
                while pending:  # earlier lines are reported first
                    write_oldest()
                on_bad(error)
        while pending:
            write_oldest()
        if not writers:  # no input lines at all
            open_writers()
        _INTERRUPTS.check()
        for writer in writers.values():
            writer.commit()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        for writer in writers.values():
            writer.__exit__(None, None, None)
    return progress.stats


def _split_files(files: Sequence[str], partitions: int) -> List[List[str]]:
    """Contiguous groups of input files, as even in count as possible."""
    bounds = numpy.linspace(0, len(files), partitions + 1).round().astype(int)
    return [list(files[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _run_partition(files, prefix, args, label, queue) -> None:
    try:
        stats = _tokenize_files(files, prefix, args, _build_tokenizer(args), label,
                                record_tokenizer=False)
        queue.put(("ok", stats))
    except BadInput as error:
        queue.put(("bad", error))
    except BaseException as error:  # report anything else to the parent, which stops
        queue.put(("error", f"{type(error).__name__}: {error}"))


def _tokenize_partitioned(args: argparse.Namespace, tokenizer: Tokenizer) -> PreprocessStats:
    groups = _split_files(args.input, args.partitions)
    if len(groups) < args.partitions:
        log(f"--partitions {args.partitions} with {len(args.input)} input files: using "
            f"{len(groups)} partitions (partitions are groups of whole files)")
    workdir = f"{args.output_prefix}.partitions.tmp-{os.getpid()}"
    os.makedirs(workdir)
    context = get_context("spawn")  # each partition starts its own worker pool
    queue = context.SimpleQueue()
    part_args = argparse.Namespace(**{**vars(args), "workers": max(1, args.workers // len(groups))})
    processes = []
    try:
        for i, files in enumerate(groups):
            prefix = os.path.join(workdir, f"part{i}")
            label = f"partition {i + 1}/{len(groups)}"
            process = context.Process(target=_run_partition,
                                      args=(files, prefix, part_args, label, queue))
            process.start()
            processes.append(process)
        stats = PreprocessStats()
        outcomes = [queue.get() for _ in processes]
        for status, payload in outcomes:
            if status == "bad":
                raise payload
            if status == "error":
                raise RuntimeError(f"a partition failed: {payload}")
            stats.add(payload)
        for key in args.json_keys:
            parts = [output_prefix_for_key(os.path.join(workdir, f"part{i}"), key)
                     for i in range(len(groups))]
            _merge_with_tokenizer(parts, output_prefix_for_key(args.output_prefix, key), tokenizer)
        return stats
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        shutil.rmtree(workdir, ignore_errors=True)


def _merge_with_tokenizer(parts: List[str], output: str, tokenizer: Tokenizer) -> None:
    with AtomicDatasetWriter(output, token_dtype(tokenizer.vocab_size), tokenizer) as writer:
        for part in parts:
            check_indexed_dataset(part)
            writer.builder.add_index(part)
        _INTERRUPTS.check()
        writer.commit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Tokenize Pile-style JSONL (plain, .gz, .zst) into Megatron indexed datasets "
                    "<output-prefix>_<key>_document.bin/.idx, with the tokenizer recorded next to "
                    "them (<...>_document.tokenizer/).")
    group = parser.add_argument_group("input")
    group.add_argument("--input", nargs="+", required=True, help="JSONL files, processed in order")
    group.add_argument("--json-keys", nargs="+", default=["text"],
                       help="keys to extract, one dataset per key (default: text)")
    group.add_argument("--keep-newlines", action="store_true",
                       help="accepted for Megatron-LM compatibility: documents are never split into "
                            "sentences here, so their text (newlines included) is always kept as is")
    group.add_argument("--skip-bad-lines", action="store_true",
                       help="skip bad lines/files and report counts by class at the end "
                            "(default: stop at the first one with a non-zero exit)")
    group = parser.add_argument_group("tokenizer")
    group.add_argument("--tokenizer-type", required=True, choices=TOKENIZER_TYPES)
    group.add_argument("--tokenizer-model",
                       help="huggingface: tokenizer.json or a local directory; sentencepiece: .model")
    group.add_argument("--vocab-file", help="gpt2bpe: vocab.json")
    group.add_argument("--merge-file", help="gpt2bpe: merges.txt")
    group.add_argument("--eod-token", help="end-of-document token (default: the tokenizer's eos or "
                                           "<|endoftext|>)")
    group.add_argument("--append-eod", action="store_true", help="append EOD after each document")
    group = parser.add_argument_group("output and runtime")
    group.add_argument("--output-prefix", required=True)
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    group.add_argument("--partitions", type=int, default=1,
                       help="run this many pipelines on contiguous groups of input files, then "
                            "merge (same output as 1)")
    group.add_argument("--log-interval", type=int, default=10000,
                       help="documents between progress lines when not on a terminal")
    group.add_argument("--chunk-lines", type=int, default=CHUNK_LINES,
                       help="lines per task handed to a worker")
    group.add_argument("--quiet", action="store_true", help="no progress output, totals only")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("workers", "partitions", "log_interval", "chunk_lines"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if len(set(args.json_keys)) != len(args.json_keys):
        parser.error(f"--json-keys has duplicates: {args.json_keys}")


def preprocess_main(argv: Optional[List[str]] = None) -> PreprocessStats:
    """Run preprocessing; raises BadInput / TokenizerError on bad input (``main`` reports them)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    with _INTERRUPTS:
        return _preprocess(args)


def _preprocess(args: argparse.Namespace) -> PreprocessStats:
    tokenizer = _build_tokenizer(args)
    start = time.monotonic()
    if args.partitions > 1 and len(args.input) == 1:
        log(f"--partitions {args.partitions} with one input file: partitions are groups of whole "
            "files, so this runs as one partition")
    if args.partitions > 1 and len(args.input) > 1:
        stats = _tokenize_partitioned(args, tokenizer)
    else:
        stats = _tokenize_files(args.input, args.output_prefix, args, tokenizer, "preprocess",
                                record_tokenizer=True)
    _report_totals(args, tokenizer, stats, time.monotonic() - start)
    return stats


def _report_totals(args, tokenizer: Tokenizer, stats: PreprocessStats, seconds: float) -> None:
    seconds = max(seconds, 1e-9)
    print(f"done: {stats.documents:,} documents, {stats.input_bytes / 1e6:,.2f} MB, "
          f"{stats.tokens:,} tokens in {seconds:.1f} s ({stats.documents / seconds:,.0f} docs/s, "
          f"{stats.input_bytes / seconds / 1e6:,.2f} MB/s, {stats.tokens / seconds:,.0f} tokens/s)")
    if args.skip_bad_lines:
        counts = ", ".join(f"{kind}: {stats.bad[kind]}" for kind in BAD_INPUT_CLASSES)
        print(f"skipped {sum(stats.bad.values())} bad inputs ({counts})")
    dtype = token_dtype(tokenizer.vocab_size)
    for key in args.json_keys:
        prefix = output_prefix_for_key(args.output_prefix, key)
        print(f"wrote {prefix}.bin/.idx ({dtype.__name__}, tokenizer {tokenizer.kind}, vocab "
              f"{tokenizer.vocab_size}, eod {tokenizer.eod}, recorded in {prefix}.tokenizer/)")


def main(argv: Optional[List[str]] = None) -> int:
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    try:
        preprocess_main(argv)
    except (BadInput, TokenizerError, IndexedDatasetError) as error:
        log(f"error: {error}")
        log("no output was written" + ("" if isinstance(error, TokenizerError) else
                                       " (use --skip-bad-lines to skip bad lines)"))
        return 1
    except BrokenProcessPool:
        log("error: a worker process died (killed, or out of memory?); no output was written")
        return 1
    except KeyboardInterrupt:
        log("interrupted: no output was written")
        return 130
    return 0
