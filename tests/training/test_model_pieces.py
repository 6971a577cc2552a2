"""The pipeline layers equal the model engineer's BasedModel (GPTModel) under the names load_full_state_dict uses."""

import torch

from based_megatron.config import build_config


def _tiny_config(**overrides):
    return build_config("based-tiny", vocab_size=257, **overrides)


def test_sequential_lm_matches_based_model(single_process_world):
    from based_megatron.model import build_model
    from based_megatron.training.model import (SequentialLM, layer_config, local_layers, pipe_key_to_gpt_name)

    config = _tiny_config()
    sequential = SequentialLM(layer_config(config), seed=7)
    full = {}
    for idx, layer in local_layers(sequential).items():
        for key, tensor in layer.state_dict().items():
            name = pipe_key_to_gpt_name(idx, key, config.num_layers)
            if name is not None:
                full[name] = tensor
    reference = build_model(config)
    expected = {k for k in reference.state_dict() if not k.endswith("_extra_state")}
    assert set(full) == expected
    reference.load_state_dict(full, strict=False)

    torch.manual_seed(0)
    tokens = torch.randint(0, 257, (2, config.seq_length))
    labels = torch.randint(0, 257, (2, config.seq_length))
    mask = torch.ones(2, config.seq_length)
    ours = sequential(tokens, labels, mask)
    theirs = reference(tokens, position_ids=None, attention_mask=None, labels=labels).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_recompute_gives_the_same_loss_and_gradients(single_process_world):
    from based_megatron.training.model import SequentialLM, layer_config

    config = layer_config(_tiny_config())
    plain, recomputed = SequentialLM(config, seed=3), SequentialLM(config, seed=3, recompute=True)
    tokens = torch.randint(0, 257, (2, config.seq_length))
    mask = torch.ones(2, config.seq_length)
    for model in (plain, recomputed):
        model(tokens, tokens, mask).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)
