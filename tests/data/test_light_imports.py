"""Preprocessing stays light: its workers import neither torch, transformers nor megatron-core, the
indexed-dataset writer that avoids megatron-core writes megatron-core's exact bytes, and the lazy
Hugging Face registration of ``import based_megatron`` still reaches the Auto classes."""

import os
import subprocess
import sys

import numpy
import pytest
from data_test_utils import REPO_ROOT_ENV
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from based_megatron.data.indexed import DTYPE_CODES, CompactIndexedDatasetBuilder
from based_megatron.data.tokenizers import token_dtype


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT_ENV})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_preprocessing_imports_neither_torch_nor_transformers_nor_megatron():
    out = run_python("import sys, based_megatron.data.preprocess, based_megatron.data.indexed; "
                     "print(sorted({m.split('.')[0] for m in sys.modules} "
                     "& {'torch', 'transformers', 'megatron'}))")
    assert out.strip() == "[]"


def test_auto_classes_registered_when_transformers_is_imported_after_based_megatron():
    out = run_python(
        "import based_megatron, sys; assert 'transformers' not in sys.modules; "
        "from transformers import AutoConfig, AutoModelForCausalLM; "
        "from based_megatron.hf.configuration_based import BasedConfig; "
        "from based_megatron.hf.modeling_based import BasedForCausalLM; "
        "assert type(AutoConfig.for_model('based')) is BasedConfig; "
        "assert AutoModelForCausalLM._model_mapping[BasedConfig] is BasedForCausalLM; print('ok')")
    assert out.strip() == "ok"


def test_token_dtype_and_codes_match_megatron_core():
    for vocab_size in (257, 65499, 65500, 50257, 128256):
        assert token_dtype(vocab_size) == DType.optimal_dtype(vocab_size)
    for dtype, code in DTYPE_CODES.items():
        assert DType.code_from_dtype(dtype) == code


@pytest.mark.parametrize("dtype", [numpy.uint16, numpy.int32])
@pytest.mark.parametrize("lengths", [[], [1], [5, 1, 300, 2, 7]])
def test_compact_builder_writes_megatron_core_bytes(tmp_path, dtype, lengths):
    import torch

    rng = numpy.random.default_rng(0)
    documents = [rng.integers(0, 1000, size=n).astype(dtype) for n in lengths]
    ours = CompactIndexedDatasetBuilder(str(tmp_path / "ours.bin"), dtype=dtype)
    if documents:
        ours.add_documents(numpy.concatenate(documents), numpy.array(lengths))
    ours.finalize(str(tmp_path / "ours.idx"))
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for document in documents:
        theirs.add_document(torch.from_numpy(document.astype(numpy.int64)), [len(document)])
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()
