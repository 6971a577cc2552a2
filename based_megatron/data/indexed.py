"""Megatron indexed datasets (``.bin``/``.idx``): safe writing, checked opening, merging.

The files are exactly what megatron-core's ``IndexedDatasetBuilder`` writes (and megatron-core,
Megatron-LM and GPT-NeoX read; tests/data compares the bytes with megatron-core's builder):

- ``CompactIndexedDatasetBuilder``: that builder for one sequence per document, written here so that
  writing does not import megatron-core (its package import takes torch and ~5 s, which
  preprocessing would pay before every run), with its per-document bookkeeping kept in ``array``
  buffers (12 bytes a document instead of ~70 in Python lists) and the sequence pointers computed
  with one cumulative sum, so writing stays flat in memory and fast on large corpora;
- ``AtomicDatasetWriter``: writes under temporary names and renames only when complete, so an
  interrupted run never leaves a ``.bin``/``.idx`` pair that looks valid;
- ``open_indexed_dataset``: checks that ``.idx`` and ``.bin`` agree before handing megatron-core's
  ``IndexedDataset`` back, naming the file and the mismatch otherwise.

Reading goes through megatron-core (imported where needed).
"""

import os
import shutil
import struct
from array import array
from typing import List, Optional

import numpy

from based_megatron.data.tokenizers import (
    Tokenizer,
    load_tokenizer_for_dataset,
    save_tokenizer,
    tokenizer_dir_for_dataset,
)

# megatron-core's index format: magic, version 1, dtype code (its DType enum), then the counts
INDEX_MAGIC = b"MMIDIDX\x00\x00"
DTYPE_CODES = {numpy.uint8: 1, numpy.int8: 2, numpy.int16: 3, numpy.int32: 4, numpy.int64: 5,
               numpy.float64: 6, numpy.float32: 7, numpy.uint16: 8}
# magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8)
INDEX_HEADER_BYTES = 34


class IndexedDatasetError(ValueError):
    """A .bin/.idx pair is missing, truncated or inconsistent; the message names the file."""


def write_index(idx_path: str, dtype, sequence_lengths: numpy.ndarray,
                document_indices: numpy.ndarray) -> None:
    """megatron-core's ``_IndexWriter.write`` (no sequence modes), pointers by a cumulative sum."""
    lengths = numpy.asarray(sequence_lengths, dtype=numpy.int32)
    # pointer_i = itemsize * sum_{j < i} length_j
    pointers = numpy.zeros(len(lengths), dtype=numpy.int64)
    numpy.cumsum(lengths[:-1].astype(numpy.int64) * numpy.dtype(dtype).itemsize, out=pointers[1:])
    with open(idx_path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<QBQQ", 1, DTYPE_CODES[dtype], len(lengths), len(document_indices)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(numpy.asarray(document_indices, dtype=numpy.int64).tobytes())


class CompactIndexedDatasetBuilder:
    """megatron-core's ``IndexedDatasetBuilder`` (same files) with a bulk ``add_documents``."""

    def __init__(self, bin_path: str, dtype=numpy.int32) -> None:
        if dtype not in DTYPE_CODES:
            raise IndexedDatasetError(f"{bin_path}: token dtype {dtype} is not one of megatron-core's")
        self.dtype = dtype
        self.data_file = open(bin_path, "wb")
        self.sequence_lengths = array("i")
        self.document_indices = array("q", [0])

    def add_documents(self, tokens: numpy.ndarray, lengths: numpy.ndarray) -> None:
        """Append documents given as one concatenated token array and their lengths; the same as
        megatron-core's ``add_document(doc, [len(doc)])`` for each document."""
        self.data_file.write(numpy.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        first = len(self.sequence_lengths) + 1
        self.sequence_lengths.frombytes(numpy.asarray(lengths, dtype=numpy.int32).tobytes())
        self.document_indices.frombytes(
            numpy.arange(first, first + len(lengths), dtype=numpy.int64).tobytes())

    def add_index(self, path_prefix: str) -> None:
        from megatron.core.datasets.indexed_dataset import _IndexReader

        index = _IndexReader(path_prefix + ".idx", multimodal=False)
        if index.dtype != self.dtype:
            raise IndexedDatasetError(f"{path_prefix}.idx: token dtype {index.dtype.__name__}, but "
                                      f"the merged dataset uses {self.dtype.__name__}")
        offset = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(index.sequence_lengths.astype(numpy.int32).tobytes())
        self.document_indices.frombytes((offset + index.document_indices[1:]).astype(numpy.int64)
                                        .tobytes())
        del index
        with open(path_prefix + ".bin", "rb") as f:
            shutil.copyfileobj(f, self.data_file)

    def finalize(self, idx_path: str) -> None:
        self.data_file.close()
        write_index(idx_path, self.dtype, numpy.frombuffer(self.sequence_lengths, dtype=numpy.int32),
                    numpy.frombuffer(self.document_indices, dtype=numpy.int64))


class AtomicDatasetWriter:
    """Write ``prefix.bin``/``prefix.idx`` (+ the tokenizer) under temporary names; ``commit``
    renames them into place, the ``.idx`` last. Leaving the ``with`` block without ``commit``
    (an error, Ctrl-C) removes the temporary files; a kill -9 leaves only ``*.tmp-<pid>`` names."""

    def __init__(self, prefix: str, dtype, tokenizer: Optional[Tokenizer] = None) -> None:
        self.prefix = prefix
        self.tokenizer = tokenizer
        suffix = f".tmp-{os.getpid()}"
        self.tmp_bin = f"{prefix}.bin{suffix}"
        self.tmp_idx = f"{prefix}.idx{suffix}"
        self.tmp_tokenizer_dir = tokenizer_dir_for_dataset(prefix) + suffix
        directory = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(directory, exist_ok=True)
        self.builder = CompactIndexedDatasetBuilder(self.tmp_bin, dtype=dtype)
        self.committed = False
        if tokenizer is not None:  # saved now, not at commit: the run's end then only renames
            try:
                save_tokenizer(tokenizer, self.tmp_tokenizer_dir)
            except BaseException:
                self.abort()
                raise

    def __enter__(self) -> "AtomicDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def commit(self) -> None:
        self.builder.finalize(self.tmp_idx)
        # no old .idx may pair with the new .bin, even if we die between the renames below
        if os.path.exists(self.prefix + ".idx"):
            os.remove(self.prefix + ".idx")
        if self.tokenizer is not None:
            final_dir = tokenizer_dir_for_dataset(self.prefix)
            if os.path.isdir(final_dir):
                shutil.rmtree(final_dir)
            os.replace(self.tmp_tokenizer_dir, final_dir)
        os.replace(self.tmp_bin, self.prefix + ".bin")
        os.replace(self.tmp_idx, self.prefix + ".idx")
        self.committed = True

    def abort(self) -> None:
        if not self.builder.data_file.closed:
            self.builder.data_file.close()
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        if os.path.isdir(self.tmp_tokenizer_dir):
            shutil.rmtree(self.tmp_tokenizer_dir)


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")


def _read_index_header(idx_path: str):
    size = os.path.getsize(idx_path)
    if size < INDEX_HEADER_BYTES:
        raise IndexedDatasetError(f"{idx_path}: {size} bytes, shorter than the {INDEX_HEADER_BYTES}"
                                  "-byte Megatron index header (truncated or not an index)")
    with open(idx_path, "rb") as f:
        header = f.read(INDEX_HEADER_BYTES)
    if header[:9] != INDEX_MAGIC:
        raise IndexedDatasetError(f"{idx_path}: bad magic {header[:9]!r}, expected {INDEX_MAGIC!r}"
                                  " (not a Megatron MMIDIDX index)")
    version, code, sequences, documents = struct.unpack("<QBQQ", header[9:])
    if version != 1:
        raise IndexedDatasetError(f"{idx_path}: index version {version}, expected 1")
    dtype = next((dtype for dtype, known in DTYPE_CODES.items() if known == code), None)
    if dtype is None:
        raise IndexedDatasetError(f"{idx_path}: unknown token dtype code {code}")
    return size, dtype, sequences, documents


def check_indexed_dataset(prefix: str, thorough: bool = False) -> None:
    """Raise IndexedDatasetError naming the file unless ``prefix.idx`` and ``prefix.bin`` agree.

    The default checks are O(1) (header, file sizes, last pointer); ``thorough`` also checks every
    sequence pointer and document index (O(documents), used by merging and the tests).
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise IndexedDatasetError(f"{path}: no such file (dataset prefix {prefix})")
    idx_size, dtype, sequences, documents = _read_index_header(idx_path)
    expected = INDEX_HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if idx_size != expected:
        raise IndexedDatasetError(
            f"{idx_path}: {idx_size} bytes, but its header announces {sequences} sequences and "
            f"{documents} document indices = {expected} bytes (truncated or corrupt index)")
    from megatron.core.datasets.indexed_dataset import _IndexReader

    index = _IndexReader(idx_path, multimodal=False)
    itemsize = numpy.dtype(dtype).itemsize
    if documents == 0 or index.document_indices[0] != 0 or index.document_indices[-1] != sequences:
        raise IndexedDatasetError(f"{idx_path}: document indices must run from 0 to the sequence "
                                  f"count {sequences} (corrupt index)")
    if sequences:
        bin_expected = int(index.sequence_pointers[-1]) + int(index.sequence_lengths[-1]) * itemsize
    else:
        bin_expected = 0
    if thorough:
        _check_index_arrays(index, idx_path, itemsize)
    del index
    bin_size = os.path.getsize(bin_path)
    if bin_size != bin_expected:
        raise IndexedDatasetError(
            f"{bin_path}: {bin_size} bytes, but {idx_path} describes {bin_expected // itemsize} "
            f"tokens of {dtype.__name__} = {bin_expected} bytes (truncated .bin, or .bin and .idx "
            "from different runs)")


def _check_index_arrays(index, idx_path: str, itemsize: int) -> None:
    lengths = index.sequence_lengths.astype(numpy.int64)
    if numpy.any(lengths < 0) or numpy.any(numpy.diff(index.document_indices) < 0):
        raise IndexedDatasetError(f"{idx_path}: negative sequence length or decreasing document "
                                  "index (corrupt index)")
    # pointer_i = itemsize * sum_{j < i} length_j
    expected_pointers = numpy.concatenate([[0], numpy.cumsum(lengths[:-1] * itemsize)])
    if len(lengths) and not numpy.array_equal(index.sequence_pointers, expected_pointers):
        raise IndexedDatasetError(f"{idx_path}: sequence pointers do not follow the sequence "
                                  "lengths (corrupt index)")


def open_indexed_dataset(prefix: str, tokenizer: Optional[Tokenizer] = None,
                         thorough: bool = False):
    """megatron-core's ``IndexedDataset`` for ``prefix`` after checking ``.idx`` against ``.bin``
    (and, when given, that the token dtype can hold the tokenizer's ids)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    check_indexed_dataset(prefix, thorough)
    dataset = IndexedDataset(prefix)
    if tokenizer is not None and tokenizer.vocab_size - 1 > numpy.iinfo(dataset.index.dtype).max:
        raise IndexedDatasetError(f"{prefix}.idx: token dtype {dataset.index.dtype.__name__} cannot "
                                  f"hold the ids of a {tokenizer.vocab_size}-token vocabulary")
    return dataset


def merge_datasets(input_prefixes: List[str], output_prefix: str) -> None:
    """Concatenate datasets (in the given order) into ``output_prefix``. All inputs must be valid,
    share the token dtype and, where recorded, the same tokenizer (recorded with the output)."""
    if not input_prefixes:
        raise IndexedDatasetError("no input datasets to merge")
    dtypes, tokenizers = [], []
    for prefix in input_prefixes:
        check_indexed_dataset(prefix, thorough=True)
        dtypes.append(_read_index_header(prefix + ".idx")[1])
        has_tokenizer = os.path.isdir(tokenizer_dir_for_dataset(prefix))
        tokenizers.append(load_tokenizer_for_dataset(prefix) if has_tokenizer else None)
    for prefix, dtype in zip(input_prefixes, dtypes):
        if dtype != dtypes[0]:
            raise IndexedDatasetError(f"{prefix}.idx: token dtype {dtype.__name__} differs from "
                                      f"{input_prefixes[0]}.idx ({dtypes[0].__name__})")
    fingerprints = {t.fingerprint for t in tokenizers if t is not None}
    if len(fingerprints) > 1:
        details = ", ".join(f"{p}: {t.fingerprint if t else 'none'}"
                            for p, t in zip(input_prefixes, tokenizers))
        raise IndexedDatasetError(f"the datasets were tokenized with different tokenizers ({details})")
    tokenizer = next((t for t in tokenizers if t is not None), None)
    with AtomicDatasetWriter(output_prefix, dtypes[0], tokenizer) as writer:
        for prefix in input_prefixes:
            writer.builder.add_index(prefix)
        writer.commit()
