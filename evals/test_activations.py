"""Residual-stream captures equal a hand computation on unpadded single prompts."""

from __future__ import annotations

import pytest
import torch

from harness.models.arch import n_layers
from harness.models.chat import format_instructions, post_instruction_tokens
from harness.models.tiny import TINY_FAMILIES, tiny_model
from harness.steering.activations import mean_activations, prompt_activations

PROMPTS = ["how to make a bomb at home", "hi", "write a poem about the sea please", "list three fruits"]


def _hand_block_inputs(model, tok, text: str) -> torch.Tensor:
    """[n_layer, seq, d_model] for one prompt, no padding, via output_hidden_states
    (hidden_states[l] is the residual stream entering block l)."""
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    return torch.stack(hidden[: n_layers(model)])[:, 0]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mean_activations_match_hand_computation(family):
    model, tok = tiny_model(family)
    n_pos = len(post_instruction_tokens(tok))
    got = mean_activations(model, tok, PROMPTS, batch_size=3, progress=False)  # batches of 3 and 1, padded
    texts = format_instructions(tok, PROMPTS)
    expected = torch.stack([_hand_block_inputs(model, tok, t)[:, -n_pos:] for t in texts]).mean(0)
    assert got.shape == (n_layers(model), n_pos, model.config.hidden_size) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_mean_activations_explicit_positions_and_batch_size_invariance():
    model, tok = tiny_model("llama")
    one = mean_activations(model, tok, PROMPTS, positions=2, batch_size=1, progress=False)
    all_ = mean_activations(model, tok, PROMPTS, positions=2, batch_size=8, progress=False)
    assert one.shape[1] == 2
    torch.testing.assert_close(one, all_, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="positions"):
        mean_activations(model, tok, PROMPTS, positions=0, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        mean_activations(model, tok, [], progress=False)


@pytest.mark.parametrize("family", ["llama", "gemma2", "qwen3_5", "gpt_oss"])
def test_prompt_activations_match_hand_computation(family):
    model, tok = tiny_model(family)
    got = prompt_activations(model, tok, PROMPTS, layers=[0, 2], pos=-2, batch_size=3)
    texts = format_instructions(tok, PROMPTS)
    expected = torch.stack([_hand_block_inputs(model, tok, t)[[0, 2], -2] for t in texts])
    assert got.shape == (len(PROMPTS), 2, model.config.hidden_size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_prompt_activations_rejects_bad_layer_and_pos():
    model, tok = tiny_model("qwen3")
    with pytest.raises(IndexError, match="layer 7"):
        prompt_activations(model, tok, PROMPTS, layers=[7])
    with pytest.raises(ValueError, match="negative"):
        prompt_activations(model, tok, PROMPTS, pos=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_resume_at_a_block_equals_the_full_forward(family):
    """Skipping the blocks below `layer` and feeding their captured output gives the same logits."""
    from harness.models.chat import tokenize_instructions
    from harness.models.logits import forward_kwargs
    from harness.steering.activations import block_inputs, resume_at

    model, tok = tiny_model(family)
    enc = tokenize_instructions(tok, PROMPTS[:3])
    kw = forward_kwargs(model, enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        full = model(**kw, use_cache=False).logits
    last = n_layers(model) - 1
    captured = block_inputs(model, [1, last], **kw)
    for layer in (1, last):
        with torch.no_grad(), resume_at(model, layer, captured[layer]):
            resumed = model(**kw, use_cache=False).logits
        assert torch.equal(resumed, full), (family, layer)
    with torch.no_grad():
        assert torch.equal(model(**kw, use_cache=False).logits, full)  # blocks are restored on exit


def test_resume_refuses_models_that_share_kv_across_layers():
    from harness.steering.activations import ResumeError, can_resume, resume_at

    model, _ = tiny_model("llama")
    assert can_resume(model)
    model.config.num_kv_shared_layers = 1
    assert not can_resume(model)
    with pytest.raises(ResumeError, match="shares keys and values"):
        with resume_at(model, 1, torch.zeros(1, 1, model.config.hidden_size)):
            pass


@pytest.mark.parametrize("family", ["gemma4", "llama"])
def test_layer_output_read_point_is_hidden_states_after_the_embeddings(family):
    """read_point="layer_output" gives transformers' hidden_states[1:] at the last prompt token (each block's
    output, the last after the final norm), on a padded batch; block l's output is block l+1's input."""
    model, tok = tiny_model(family, multimodal=family == "gemma4")
    outputs = prompt_activations(model, tok, PROMPTS, batch_size=3, read_point="layer_output")
    inputs = prompt_activations(model, tok, PROMPTS, batch_size=3)
    n = n_layers(model)
    assert outputs.shape == (len(PROMPTS), n, inputs.shape[-1])
    for i, text in enumerate(format_instructions(tok, PROMPTS)):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(outputs[i], torch.stack(hidden[1:])[:, 0, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outputs[:, : n - 1], inputs[:, 1:], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outputs[:, :-1], inputs[:, :-1], atol=1e-3)
    with pytest.raises(ValueError, match="read_point"):
        prompt_activations(model, tok, PROMPTS, read_point="mlp")
