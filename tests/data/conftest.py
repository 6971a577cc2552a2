"""Shared fixtures for the data tests: a small slice of the embedded sample corpus, tokenizers
trained on it (nothing downloaded), and helpers to run preprocessing in-process."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from based_megatron.data.sample_corpus import iter_sample_documents  # noqa: E402
from data_test_utils import TRICKY_TEXTS, write_jsonl  # noqa: E402

@pytest.fixture(scope="session")
def sample_documents():
    """All (pile_set_name, text) pairs of the embedded corpus, computed once."""
    return list(iter_sample_documents())


@pytest.fixture(scope="session")
def small_texts(sample_documents):
    """~60 documents of each subset of the corpus, plus the tricky ones."""
    by_set = {}
    for set_name, text in sample_documents:
        by_set.setdefault(set_name, []).append(text)
    texts = []
    for set_name in sorted(by_set):
        texts += by_set[set_name][:20]
    return texts + TRICKY_TEXTS


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, small_texts):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "small.jsonl", small_texts)


@pytest.fixture(scope="session")
def trained_tokenizers(tmp_path_factory, small_texts):
    """Tiny BPE and SentencePiece tokenizers trained on the small corpus: {name: build kwargs}."""
    from based_megatron.data.tokenizer_training import train_bpe, train_sentencepiece

    root = tmp_path_factory.mktemp("tokenizers")
    train_bpe(iter(small_texts), 600, str(root / "bpe"))
    train_sentencepiece(iter(small_texts[:20]), 500, str(root / "sp_unigram"), "unigram")
    train_sentencepiece(iter(small_texts), 500, str(root / "sp_bpe"), "bpe")
    return {
        "byte": dict(tokenizer_type="byte"),
        "huggingface-json": dict(tokenizer_type="huggingface",
                                 tokenizer_model=str(root / "bpe" / "tokenizer.json")),
        "huggingface-dir": dict(tokenizer_type="huggingface", tokenizer_model=str(root / "bpe")),
        "gpt2bpe": dict(tokenizer_type="gpt2bpe", vocab_file=str(root / "bpe" / "vocab.json"),
                        merge_file=str(root / "bpe" / "merges.txt")),
        "sentencepiece-unigram": dict(tokenizer_type="sentencepiece",
                                      tokenizer_model=str(root / "sp_unigram" / "tokenizer.model")),
        "sentencepiece-bpe": dict(tokenizer_type="sentencepiece",
                                  tokenizer_model=str(root / "sp_bpe" / "tokenizer.model")),
    }


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The embedded default: full sample corpus, byte tokenizer (ensure_sample_dataset)."""
    from based_megatron.data.sample_corpus import ensure_sample_dataset

    return ensure_sample_dataset(str(tmp_path_factory.mktemp("sample")))
