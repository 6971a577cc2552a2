"""tools/preprocess_data.py: round trips per tokenizer kind, determinism, compressed inputs,
every bad-input class, interrupted runs, truncated/mismatched datasets, merging."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy
import psutil
import pytest
import zstandard
from data_test_utils import REPO_ROOT_ENV, preprocess, tokenizer_flags, write_jsonl

from based_megatron.data.indexed import (
    IndexedDatasetError,
    check_indexed_dataset,
    merge_datasets,
    open_indexed_dataset,
)
from based_megatron.data.jsonl import BadInput
from based_megatron.data.tokenizers import (
    TokenizerError,
    build_tokenizer,
    load_tokenizer_for_dataset,
)

TOKENIZER_KINDS = ["byte", "huggingface-json", "huggingface-dir", "gpt2bpe",
                   "sentencepiece-unigram", "sentencepiece-bpe"]


def read_bytes(prefix):
    return open(prefix + ".bin", "rb").read(), open(prefix + ".idx", "rb").read()


def no_dataset_files(directory):
    return [n for n in os.listdir(directory) if n.endswith((".bin", ".idx", ".tokenizer"))]


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_round_trip(kind, tmp_path, small_corpus, small_texts, trained_tokenizers):
    kwargs = trained_tokenizers[kind]
    stats = preprocess(small_corpus, tmp_path / "out", tokenizer=tokenizer_flags(kwargs))
    prefix = str(tmp_path / "out_text_document")
    tokenizer = load_tokenizer_for_dataset(prefix)  # recorded next to the dataset
    assert tokenizer.fingerprint == build_tokenizer(**kwargs).fingerprint
    dataset = open_indexed_dataset(prefix, tokenizer, thorough=True)
    assert dataset.index.dtype == numpy.uint16
    assert len(dataset) == len(small_texts) == stats.documents
    assert stats.tokens == int(dataset.sequence_lengths.sum())
    for i, text in enumerate(small_texts):
        ids = dataset[i].tolist()
        assert ids[-1] == tokenizer.eod and tokenizer.eod not in ids[:-1]
        assert tokenizer.decode(ids[:-1]) == text


def test_large_vocab_uses_int32(tmp_path, small_texts):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for text in small_texts for w in text.split()})
    vocab = {"<unk>": 0, "<|endoftext|>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    vocab.update({f"filler{i}": len(vocab) + i for i in range(70_000 - len(vocab))})
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model.save(str(tmp_path / "big.json"))
    top = max(vocab, key=vocab.get)  # id 69999
    corpus = write_jsonl(tmp_path / "c.jsonl", ["one two words", f"{top} never-seen-word"])
    preprocess(corpus, tmp_path / "out", tokenizer=["--tokenizer-type", "huggingface",
                                                    "--tokenizer-model", str(tmp_path / "big.json")])
    dataset = open_indexed_dataset(str(tmp_path / "out_text_document"))
    assert dataset.index.dtype == numpy.int32
    assert dataset[1].tolist() == [69_999, vocab["<unk>"], vocab["<|endoftext|>"]]


def test_workers_chunks_and_partitions_give_identical_bytes(tmp_path, small_corpus, small_texts,
                                                            trained_tokenizers):
    flags = tokenizer_flags(trained_tokenizers["gpt2bpe"])
    preprocess(small_corpus, tmp_path / "w1", "--workers", "1", tokenizer=flags)
    preprocess(small_corpus, tmp_path / "w2", "--workers", "2", "--chunk-lines", "3",
               tokenizer=flags)
    reference = read_bytes(str(tmp_path / "w1_text_document"))
    assert read_bytes(str(tmp_path / "w2_text_document")) == reference
    half = len(small_texts) // 2
    parts = [write_jsonl(tmp_path / "a.jsonl", small_texts[:half]),
             write_jsonl(tmp_path / "b.jsonl", small_texts[half:])]
    preprocess(parts, tmp_path / "p2", "--workers", "2", "--partitions", "2", tokenizer=flags)
    assert read_bytes(str(tmp_path / "p2_text_document")) == reference
    assert os.path.isdir(str(tmp_path / "p2_text_document.tokenizer"))
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]


def test_multiple_json_keys(tmp_path):
    path = tmp_path / "k.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}", "title": f"T{i}"}) + "\n"
                            for i in range(5)))
    preprocess(str(path), tmp_path / "out", "--json-keys", "text", "title")
    titles = open_indexed_dataset(str(tmp_path / "out_title_document"))  # keep: arrays view its mmap
    assert titles[3].tolist() == list(b"T3") + [256]
    assert len(open_indexed_dataset(str(tmp_path / "out_text_document"))) == 5


def test_gz_and_zst_inputs(tmp_path, small_corpus):
    raw = open(small_corpus, "rb").read()
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(raw)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    preprocess(small_corpus, tmp_path / "plain")
    preprocess(str(tmp_path / "c.jsonl.gz"), tmp_path / "gz", "--workers", "2")
    preprocess(str(tmp_path / "c.jsonl.zst"), tmp_path / "zst")
    reference = read_bytes(str(tmp_path / "plain_text_document"))
    assert read_bytes(str(tmp_path / "gz_text_document")) == reference
    assert read_bytes(str(tmp_path / "zst_text_document")) == reference


GOOD = json.dumps({"text": "fine"}).encode() + b"\n"
BAD_LINES = {
    "malformed JSON": b'{"text": "unterminated\n',
    "missing key": json.dumps({"content": "x"}).encode() + b"\n",
    "non-string value": json.dumps({"text": 42}).encode() + b"\n",
    "invalid UTF-8 raw": b'{"text": "caf\xe9"}\n',
    "invalid UTF-8 escaped": b'{"text": "lone \\udc80 surrogate"}\n',
    "empty document": json.dumps({"text": " \n "}).encode() + b"\n",
    "blank line": b"\n",
    "not an object": b'["text"]\n',
}
EXPECTED_CLASS = {"invalid UTF-8 raw": "invalid UTF-8", "invalid UTF-8 escaped": "invalid UTF-8",
                  "blank line": "malformed JSON", "not an object": "malformed JSON"}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_stops_or_is_skipped(case, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + GOOD + BAD_LINES[case] + GOOD)
    kind = EXPECTED_CLASS.get(case, case)
    with pytest.raises(BadInput) as error:
        preprocess(str(path), tmp_path / "out", "--chunk-lines", "2")
    assert (error.value.path, error.value.line, error.value.kind) == (str(path), 3, kind)
    assert str(error.value).startswith(f"{path}:3: {kind}: ")
    assert no_dataset_files(tmp_path) == []
    stats = preprocess(str(path), tmp_path / "out", "--skip-bad-lines")
    assert stats.documents == 3 and dict(stats.bad) == {kind: 1}
    assert len(open_indexed_dataset(str(tmp_path / "out_text_document"))) == 3


def test_missing_unreadable_and_corrupt_files(tmp_path, small_corpus):
    missing = str(tmp_path / "missing.jsonl")
    with pytest.raises(BadInput, match="missing.jsonl: unreadable file: no such file"):
        preprocess([small_corpus, missing], tmp_path / "out")
    with pytest.raises(BadInput, match="unreadable file: not a regular file"):
        preprocess(str(tmp_path), tmp_path / "out")
    truncated = tmp_path / "cut.jsonl.gz"
    with gzip.open(truncated, "wb") as f:
        f.write(open(small_corpus, "rb").read())
    truncated.write_bytes(truncated.read_bytes()[:-2000])
    with pytest.raises(BadInput, match=r"cut.jsonl.gz:\d+: unreadable file: read failed"):
        preprocess(str(truncated), tmp_path / "out")
    assert no_dataset_files(tmp_path) == []
    stats = preprocess([missing, small_corpus], tmp_path / "out", "--skip-bad-lines")
    assert stats.bad["unreadable file"] == 1 and stats.documents > 0


def test_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer type 'bogus'"):
        build_tokenizer("bogus")
    with pytest.raises(TokenizerError, match="--vocab-file is required"):
        build_tokenizer("gpt2bpe")
    with pytest.raises(TokenizerError, match="nope.model: no such file"):
        build_tokenizer("sentencepiece", tokenizer_model=str(tmp_path / "nope.model"))
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(TokenizerError, match="junk.json: not a tokenizers JSON file"):
        build_tokenizer("huggingface", tokenizer_model=str(tmp_path / "junk.json"))


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    from based_megatron.data.preprocess import main  # what tools/preprocess_data.py exits with

    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD + b"{oops\n" + GOOD + json.dumps({"text": 1}).encode() + b"\n")
    common = ["--input", str(path), "--output-prefix", str(tmp_path / "out"), "--quiet"]
    assert main(common + ["--tokenizer-type", "byte"]) == 1
    assert f"{path}:2: malformed JSON" in capsys.readouterr().err
    assert no_dataset_files(tmp_path) == []
    assert main(common + ["--tokenizer-type", "byte", "--skip-bad-lines"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad inputs (malformed JSON: 1, missing key: 0, non-string value: 1" in out
    assert "done: 2 documents" in out
    with pytest.raises(SystemExit) as exit_info:
        main(common + ["--tokenizer-type", "bogus"])
    assert exit_info.value.code == 2
    assert "--tokenizer-type: invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_leaves_no_valid_looking_pair(sig, tmp_path, sample_documents):
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:  # ~170 MB: far longer to process than the time to the signal (40 MB took 2 s here)
        for _ in range(40):
            for set_name, text in sample_documents:
                f.write(json.dumps({"text": text}) + "\n")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT_ENV, "tools", "preprocess_data.py"), "--input",
         str(big), "--output-prefix", str(tmp_path / "out"), "--tokenizer-type", "byte",
         "--append-eod", "--quiet"], stderr=open(tmp_path / "stderr.txt", "w"))
    deadline = time.monotonic() + 60
    while not [n for n in os.listdir(tmp_path) if ".bin.tmp-" in n]:
        assert process.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "stderr.txt").read_text()
        time.sleep(0.05)
    helpers = []
    while not helpers:   # forkserver + workers: signal as soon as they exist
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
        helpers = psutil.Process(process.pid).children(recursive=True)
        time.sleep(0.05)
    process.send_signal(sig)
    process.wait(timeout=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert not os.path.exists(tmp_path / "out_text_document.bin")
    assert not os.path.exists(tmp_path / "out_text_document.idx")
    with pytest.raises(IndexedDatasetError, match="no such file"):
        open_indexed_dataset(str(tmp_path / "out_text_document"))
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith("out")]
    # the helper processes follow the main process out, even after kill -9
    gone, alive = psutil.wait_procs(helpers, timeout=30)
    assert not alive
    if sig == signal.SIGINT:  # Ctrl-C: clean exit, temporary files removed
        assert process.returncode == 130 and "interrupted" in stderr
        assert leftovers == []
    else:
        assert process.returncode == -signal.SIGKILL
        assert all(".tmp-" in n for n in leftovers)


def test_ctrl_c_that_a_library_swallows_still_stops_before_commit(tmp_path, monkeypatch, capsys):
    """A SIGINT whose KeyboardInterrupt some library code catches (an import interrupted half-way) must not let
    the run go on to write a valid-looking pair."""
    from based_megatron.data import preprocess

    update = preprocess.Progress.update

    def update_swallowing_ctrl_c(self, result):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        update(self, result)

    monkeypatch.setattr(preprocess.Progress, "update", update_swallowing_ctrl_c)
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD * 3)
    code = preprocess.main(["--input", str(path), "--output-prefix", str(tmp_path / "out"), "--quiet",
                            "--tokenizer-type", "byte"])
    assert code == 130 and "interrupted: no output was written" in capsys.readouterr().err
    assert no_dataset_files(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler      # the handler is put back


@pytest.fixture
def dataset_pair(tmp_path, small_corpus, small_texts):
    preprocess(small_corpus, tmp_path / "a")
    preprocess(write_jsonl(tmp_path / "b.jsonl", small_texts[:5]), tmp_path / "b")
    return str(tmp_path / "a_text_document"), str(tmp_path / "b_text_document")


def test_truncated_or_mismatched_files_are_refused(tmp_path, dataset_pair):
    a, b = dataset_pair
    check_indexed_dataset(a, thorough=True)
    data = open(a + ".bin", "rb").read()
    open(a + ".bin", "wb").write(data[:-10])
    with pytest.raises(IndexedDatasetError, match=r"a_text_document.bin: \d+ bytes, but .* describes"):
        open_indexed_dataset(a)
    open(a + ".bin", "wb").write(data)
    shutil.copy(b + ".idx", a + ".idx")  # an index from another run
    with pytest.raises(IndexedDatasetError, match="truncated .bin, or .bin and .idx from different"):
        open_indexed_dataset(a)
    index = open(b + ".idx", "rb").read()
    open(b + ".idx", "wb").write(index[:-8])
    with pytest.raises(IndexedDatasetError, match="b_text_document.idx: .* bytes, but its header"):
        open_indexed_dataset(b)
    open(b + ".idx", "wb").write(b"NOTANIDX" + index[8:])
    with pytest.raises(IndexedDatasetError, match="bad magic"):
        open_indexed_dataset(b)
    os.remove(b + ".idx")
    with pytest.raises(IndexedDatasetError, match="b_text_document.idx: no such file"):
        open_indexed_dataset(b)


def test_merge_equals_single_run(tmp_path, small_texts, trained_tokenizers):
    half = len(small_texts) // 2
    first = write_jsonl(tmp_path / "1.jsonl", small_texts[:half])
    second = write_jsonl(tmp_path / "2.jsonl", small_texts[half:])
    flags = tokenizer_flags(trained_tokenizers["sentencepiece-bpe"])
    preprocess(first, tmp_path / "s1", tokenizer=flags)
    preprocess(second, tmp_path / "s2", tokenizer=flags)
    preprocess([first, second], tmp_path / "all", tokenizer=flags)
    from based_megatron.data.merge import main as merge_main  # tools/merge_datasets.py

    assert merge_main(["--input", str(tmp_path / "s1_text_document"),
                       str(tmp_path / "s2_text_document"),
                       "--output-prefix", str(tmp_path / "merged_text_document")]) == 0
    merged = str(tmp_path / "merged_text_document")
    assert read_bytes(merged) == read_bytes(str(tmp_path / "all_text_document"))
    assert load_tokenizer_for_dataset(merged).fingerprint == \
        build_tokenizer(**trained_tokenizers["sentencepiece-bpe"]).fingerprint
    preprocess(first, tmp_path / "byte")
    with pytest.raises(IndexedDatasetError, match="different tokenizers"):
        merge_datasets([str(tmp_path / "s1_text_document"), str(tmp_path / "byte_text_document")],
                       str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad.idx")
