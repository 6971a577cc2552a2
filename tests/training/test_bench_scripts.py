"""bench/multi_gpu.py's layouts, launch lines and log parsing (the runs themselves need GPUs; the CPU smoke run,
`python3 bench/multi_gpu.py --device cpu --gpus 2 --model based-tiny --seq-length 128 --steps 4 --out DIR`,
takes ~2.5 minutes on 2 cores and is run by hand)."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def multi_gpu():
    spec = importlib.util.spec_from_file_location("multi_gpu", os.path.join(REPO, "bench", "multi_gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
training based-360m (layers CLSC...) | world 4 = TP 2 x PP 2 x DP 1 | ZeRO 1 | bf16
 iteration      1/     3 | consumed tokens        16384 | loss 10.9860 | lr 1.200e-03 | grad norm 109.971 | step time 2.182 s | tokens/s 7507 | TFLOP/s/GPU 16.510 | MFU 1.67% | skipped 0
 iteration      2/     3 | consumed tokens        32768 | loss 9.1894 | lr 2.700e-03 | grad norm 5.446 | step time 0.232 s | tokens/s 70708 | TFLOP/s/GPU 155.509 | MFU 15.72% | skipped 0
 iteration      3/     3 | consumed tokens        49152 | loss nan | lr 2.742e-03 | grad norm nan | step time 0.229 s | tokens/s 71507 | TFLOP/s/GPU 157.267 | MFU 15.90% | skipped 1
"""


def test_layouts_fill_the_gpus_with_the_same_global_batch(multi_gpu):
    args = multi_gpu.parse_args(["--gpus", "4", "--out", "unused"])
    layouts = multi_gpu.layouts_for(4)
    assert [(l.name, l.tp, l.pp, l.dp) for l in layouts] == [
        ("1 GPU (reference)", 1, 1, 1), ("TP2xPP2", 2, 2, 1), ("DP4", 1, 1, 4), ("TP2xDP2", 2, 1, 2)]
    assert [l.name for l in layouts if l.save] == ["TP2xPP2"]
    for layout in layouts:
        micro = multi_gpu.micro_batch_size(layout, args)
        accumulation = 4 if layout.pp > 1 else 1
        assert micro * layout.dp * accumulation == args.global_batch_size
    assert [(l.tp, l.pp, l.dp) for l in multi_gpu.layouts_for(2)] == [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]


def test_pipeline_runs_of_based_360m_mark_their_stages(multi_gpu):
    from based_megatron.config import build_config

    pattern = multi_gpu.staged_layer_pattern("based-360m", 2)
    config = build_config("based-360m", layer_pattern=pattern, tensor_model_parallel_size=2,
                          pipeline_model_parallel_size=2)
    assert [len(stage) for stage in config.pipeline_stages] == [14, 13]
    assert config.layer_symbols == build_config("based-360m").layer_symbols
    assert multi_gpu.staged_layer_pattern("based-1.3b", 2) is None  # 36 layers split evenly

    args = multi_gpu.parse_args(["--gpus", "4", "--out", "unused"])
    command = multi_gpu.training_command(multi_gpu.layouts_for(4)[1], args, "data/prefix", "ckpt")
    assert command[command.index("--layer-pattern") + 1] == pattern
    assert command[command.index("--global-batch-size") + 1] == "8"
    assert command[-2:] == ["--save", "ckpt"]


def test_log_parsing_and_loss_comparison(multi_gpu):
    assert multi_gpu.parse_peak_memory(LOG) == []
    memory_line = "peak memory per rank (GiB allocated / reserved): 0: 9.28 / 11.40 | 1: 9.05 / 11.38\n"
    assert multi_gpu.parse_peak_memory(LOG + memory_line) == [(9.28, 11.40), (9.05, 11.38)]
    steps = multi_gpu.parse_training_log(LOG)
    assert [s["iteration"] for s in steps] == [1, 2, 3]
    assert steps[1]["loss"] == 9.1894 and steps[1]["tokens_per_sec"] == 70708 and steps[2]["skipped"] == 1
    assert multi_gpu.steady_median(steps, "tokens_per_sec", warmup=1) == pytest.approx((70708 + 71507) / 2)

    reference = dict(steps=steps[:2])
    run = dict(steps=[dict(s, loss=s["loss"] * 1.01) for s in steps[:2]])
    comparison = multi_gpu.compare_losses(run, reference, rtol=2e-2)
    assert comparison["compared_steps"] == 2 and comparison["losses_match"]
    assert comparison["max_rel_loss_diff"] == pytest.approx(1e-2)
    assert not multi_gpu.compare_losses(run, reference, rtol=1e-3)["losses_match"]
    assert not multi_gpu.compare_losses(dict(steps=steps[:1]), reference, rtol=2e-2)["losses_match"]  # a step missing

    skipped = dict(steps=[steps[0], dict(steps[1], loss=float("nan"))])
    assert not multi_gpu.compare_losses(skipped, reference, rtol=2e-2)["losses_match"]
