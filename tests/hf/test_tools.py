"""lm-eval end to end on an exported tiny model (offline local tasks), tools/generate.py, bench/generation.py smoke."""

import glob
import importlib.util
import json
import os
import subprocess

import pytest
import torch

from based_megatron.hf import convert
from based_megatron.hf.modeling_based import BasedForCausalLM
from tests.hf.conftest import tiny_hf_config
from tests.hf.helpers import REPO, load_tool


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """An export (modeling code, auto_map, byte-level tokenizer) of a random tiny Based model, vocab 257."""
    from based_megatron.data.tokenizers import ByteTokenizer

    root = tmp_path_factory.mktemp("tiny_export")
    tokenizer_dir = str(root / "tokenizer")
    ByteTokenizer().save_pretrained(tokenizer_dir)
    config = tiny_hf_config(vocab_size=257, pad_vocab_size_multiple=1, bos_token_id=256, eos_token_id=256,
                            pad_token_id=None, n_positions=256)
    torch.manual_seed(0)
    state = BasedForCausalLM(config).state_dict()
    out = str(root / "hf")
    convert.prepare_output_dir(out, overwrite=False)
    convert.write_hf_directory(out, config, state, tokenizer_dir, torch.float32)
    return out


def test_lm_eval_end_to_end_on_local_tasks(tiny_export, tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OUTPUT=str(tmp_path), BATCH_SIZE="4", DEVICE="cpu", HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    result = subprocess.run(
        ["bash", os.path.join(REPO, "examples", "eval_harness.sh"), tiny_export,
         "based_local_lambada,based_local_recall"],
        env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    [results_file] = glob.glob(str(tmp_path / "**" / "results_*.json"), recursive=True)
    with open(results_file) as f:
        results = json.load(f)["results"]
    assert 0.0 <= results["based_local_lambada"]["acc,none"] <= 1.0
    assert results["based_local_lambada"]["perplexity,none"] > 1.0
    assert 0.0 <= results["based_local_recall"]["exact_match,none"] <= 1.0


def test_eval_harness_names_a_missing_model_directory(tmp_path):
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "eval_harness.sh"), str(tmp_path / "none")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 2 and "does not exist" in result.stdout


def test_generate_prints_continuation_and_speed(tiny_export, capsys):
    load_tool("generate").main([tiny_export, "--prompt", "Hello", "--max-new-tokens", "6", "--greedy"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("[6 new tokens in") and "tokens/s on cpu" in lines[-1]


def test_generation_benchmark_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_generation", os.path.join(REPO, "bench", "generation.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(bench.parse_args(["--config", "tiny", "--batch-sizes", "1,2", "--prompt-len", "12",
                                       "--new-tokens", "4"]))
    assert set(rows) == {(b, m) for b in (1, 2) for m in ("based", "transformer")}
    assert all(row["tokens_per_s"] > 0 and row["cache_mb"] > 0 for row in rows.values())
    table = capsys.readouterr().out
    assert "| batch | model |" in table and "| 2 | based |" in table
