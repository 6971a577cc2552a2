"""Training-side loading: megatron-core GPTDataset blends, splits, EOD handling, resumable order."""

import itertools
import os
import subprocess
import sys

import numpy
import pytest
import torch
from data_test_utils import REPO_ROOT_ENV, preprocess, tokenizer_flags, write_jsonl

from based_megatron.data.gpt_datasets import (
    PretrainingSampler,
    build_gpt_datasets,
    build_pretraining_data_loader,
    parse_data_path,
)
from based_megatron.data.indexed import IndexedDatasetError
from based_megatron.data.tokenizers import BYTE_EOD_ID, build_tokenizer


def test_parse_data_path():
    assert parse_data_path(["a", "b"]) == (["a", "b"], None)
    assert parse_data_path("0.7 a 0.3 b") == (["a", "b"], [0.7, 0.3])
    for bad, message in [("0.7 a b", "stray number"), ("0.7 a 0.3 0.1", "expected a dataset"),
                         ("0 a 1 b", "must be > 0"), ("", "empty")]:
        with pytest.raises(ValueError, match=message):
            parse_data_path(bad)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, sample_documents):
    """Docstrings and Github subsets of the sample corpus as two byte-level datasets."""
    root = tmp_path_factory.mktemp("blend")
    prefixes = []
    for name, set_name in (("docs", "Python Docstrings"), ("code", "Github")):
        texts = [text for s, text in sample_documents if s == set_name][:150]
        preprocess(write_jsonl(root / f"{name}.jsonl", texts), root / name)
        prefixes.append(str(root / f"{name}_text_document"))
    return prefixes


def build(data_path, cache, **overrides):
    kwargs = dict(split="969,30,1", seq_length=64, seed=1234, train_samples=1000, valid_samples=50,
                  test_samples=10, cache_dir=str(cache))
    kwargs.update(overrides)
    return build_gpt_datasets(data_path, **kwargs)


def test_blend_weights(two_datasets, tmp_path):
    docs, code = two_datasets
    with pytest.raises(ValueError, match="leaves its test split 0 of 150 documents and no tokens"):
        build(["0.7", docs, "0.3", code], tmp_path)  # 969,30,1 of 150 documents: empty test split
    train, valid, test = build(["0.7", docs, "0.3", code], tmp_path, split="90,9,1")
    assert len(train) == 1000 and len(valid) == 50
    counts = numpy.bincount([int(train[i]["dataset_id"]) for i in range(len(train))], minlength=2)
    assert abs(counts[0] - 700) <= 1 and abs(counts[1] - 300) <= 1


def test_split_sizes(sample_dataset, tmp_path):
    train, valid, test = build(sample_dataset, tmp_path, train_samples=200, valid_samples=20,
                               test_samples=5)
    documents = len(train.dataset.document_indices) - 1
    train_end, valid_end = round(0.969 * documents), round(0.999 * documents)
    assert (train.indices[0], train.indices[-1] + 1) == (0, train_end)
    assert (valid.indices[0], valid.indices[-1] + 1) == (train_end, valid_end)
    assert (test.indices[0], test.indices[-1] + 1) == (valid_end, documents)
    assert (len(train), len(valid), len(test)) >= (200, 20, 5)
    train_only = build(sample_dataset, tmp_path, split="1,0,0")
    assert train_only[1] is None and train_only[2] is None


def test_eod_handling_and_document_resets(sample_dataset, tmp_path):
    plain = build(sample_dataset, tmp_path, seq_length=2048, train_samples=20)[0]
    sample = plain[0]
    assert set(sample) == {"tokens", "labels", "loss_mask", "position_ids"}
    assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
    assert sample["loss_mask"].all() and torch.equal(sample["position_ids"], torch.arange(2048))
    reset = build(sample_dataset, tmp_path, seq_length=2048, train_samples=20,
                  reset_position_ids=True, reset_attention_mask=True, eod_mask_loss=True)[0]
    sample = reset[0]
    assert torch.equal(sample["tokens"], plain[0]["tokens"])  # same order, only masks differ
    eods = (sample["tokens"] == BYTE_EOD_ID).nonzero().flatten().tolist()
    assert eods, "a 2048-token sample of this corpus spans a document boundary"
    assert (sample["loss_mask"][eods] == 0).all() and sample["loss_mask"].sum() == 2048 - len(eods)
    first = eods[0]
    assert sample["position_ids"][first + 1] == 0
    assert torch.equal(sample["position_ids"][: first + 1], torch.arange(first + 1))
    mask = sample["attention_mask"][0]  # True = masked out (megatron convention)
    assert mask[first + 1, first] and not mask[first + 1, first + 1] and not mask[first, 0]


def test_deterministic_order_and_resume(sample_dataset, tmp_path):
    train = build(sample_dataset, tmp_path)[0]
    again = build(sample_dataset, tmp_path)[0]  # index cache hit
    other_seed = build(sample_dataset, tmp_path, seed=99)[0]
    firsts = [train[i]["tokens"] for i in range(8)]
    assert all(torch.equal(a, again[i]["tokens"]) for i, a in enumerate(firsts))
    assert not all(torch.equal(a, other_seed[i]["tokens"]) for i, a in enumerate(firsts))

    # one epoch of samples at least (megatron-core builds whole epochs); compare the first batches
    full_loader = build_pretraining_data_loader(train, 0, micro_batch_size=4)
    resumed_loader = build_pretraining_data_loader(train, 40, micro_batch_size=4)
    assert len(full_loader) == len(train) // 4 and len(resumed_loader) == len(full_loader) - 10
    full = [b["tokens"] for b in itertools.islice(full_loader, 30)]
    resumed = [b["tokens"] for b in itertools.islice(resumed_loader, 20)]
    assert all(torch.equal(a, b) for a, b in zip(full[10:], resumed))


def test_sampler_shards_global_batches_across_ranks():
    ranks = [list(PretrainingSampler(100, 6, 2, rank, 3)) for rank in range(3)]
    assert ranks[0][:2] == [[6, 7], [12, 13]] and ranks[2][0] == [10, 11]
    merged = [i for step in zip(*ranks) for batch in step for i in batch]
    assert merged == list(range(6, 6 + 6 * 15))  # drop_last: 94 remaining -> 15 global batches
    assert all(len(PretrainingSampler(100, 6, 2, r, 3)) == 15 for r in range(3))
    assert list(PretrainingSampler(10, 0, 4, 1, 2, drop_last=False)) == [[4, 5, 6, 7]]
    with pytest.raises(ValueError, match="consumed_samples=100 must lie in"):
        PretrainingSampler(100, 100, 2)


def test_bad_training_inputs(sample_dataset, two_datasets, tmp_path, trained_tokenizers):
    with pytest.raises(IndexedDatasetError, match="missing_text_document.idx: no such file"):
        build(str(tmp_path / "missing_text_document"), tmp_path,
              tokenizer=build_tokenizer("byte"))
    gpt2 = build_tokenizer(**trained_tokenizers["gpt2bpe"])
    with pytest.raises(ValueError, match="was tokenized with ByteTokenizer"):
        build(sample_dataset, tmp_path, tokenizer=gpt2)
    with pytest.raises(ValueError, match="--split 'a,b'"):
        build(sample_dataset, tmp_path, split="a,b")
    flags = tokenizer_flags(trained_tokenizers["gpt2bpe"])
    preprocess(write_jsonl(tmp_path / "x.jsonl", ["some text"] * 3), tmp_path / "x", tokenizer=flags)
    with pytest.raises(ValueError, match="fingerprint"):
        build(["1", two_datasets[0], "1", str(tmp_path / "x_text_document")], tmp_path)


def test_distributed_build_and_sharding(sample_dataset, tmp_path):
    """Two gloo ranks under torchrun: rank 0 builds the caches, both see the same samples, and
    the sampler gives each rank its own slice of every global batch."""
    script = os.path.join(os.path.dirname(__file__), "distributed_gpt_datasets.py")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", script, sample_dataset, str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO_ROOT_ENV, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("rank ok") == 2
