"""Chat formatting goes through each tokenizer's own template; post-instruction tokens are derived."""

from __future__ import annotations

import pytest
from tokenizers import processors

from harness.models.chat import ChatTemplateError, format_instructions, post_instruction_tokens, tokenize_instructions
from harness.models.tiny import TINY_FAMILIES, tiny_tokenizer

# What each real template writes after the user's message (format of the published templates).
EXPECTED_SUFFIX = {
    "llama": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": " [/INST]",
    "gemma": "<end_of_turn>\n<start_of_turn>model\n",
    "gemma2": "<end_of_turn>\n<start_of_turn>model\n",
    "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
    "gemma4": "<turn|>\n<|turn>model\n",
    "qwen2": "<|im_end|>\n<|im_start|>assistant\n",
    "qwen3": "<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_5": "<|im_end|>\n<|im_start|>assistant\n",
    "gpt_oss": "<|end|><|start|>assistant",
}


def test_every_family_has_an_expected_suffix():
    assert set(EXPECTED_SUFFIX) == set(TINY_FAMILIES)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_post_instruction_tokens_match_template(family):
    tok = tiny_tokenizer(family)
    ids = post_instruction_tokens(tok)
    assert tok.decode(ids) == EXPECTED_SUFFIX[family]
    formatted = tokenize_instructions(tok, ["write a poem about the sea"])["input_ids"][0].tolist()
    assert formatted[-len(ids):] == ids


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_gemma_post_instruction_is_five_tokens(family):
    tok = tiny_tokenizer(family)
    ids = post_instruction_tokens(tok)
    assert tok.convert_ids_to_tokens(ids) == ["<end_of_turn>", "Ċ", "<start_of_turn>", "model", "Ċ"]


def test_post_instruction_tokens_follow_a_changed_template():
    tok = tiny_tokenizer("qwen3")
    tok.chat_template = tok.chat_template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n")
    assert tok.decode(post_instruction_tokens(tok)) == "<|im_end|>\n<|im_start|>assistant\n<think>\n"
    plain = tiny_tokenizer("qwen3")
    no_think = post_instruction_tokens(plain, enable_thinking=False)
    assert plain.decode(no_think) == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_format_instructions_uses_template_and_system():
    tok = tiny_tokenizer("gemma")
    (text,) = format_instructions(tok, ["hi"], system="be safe")
    assert text == "<bos><start_of_turn>user\nbe safe\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    (qwen,) = format_instructions(tiny_tokenizer("qwen3"), ["hi"], system="be safe")
    assert qwen.startswith("<|im_start|>system\nbe safe<|im_end|>\n<|im_start|>user\nhi<|im_end|>")


def test_missing_chat_template_is_a_clear_error():
    tok = tiny_tokenizer("llama")
    tok.chat_template = None
    with pytest.raises(ChatTemplateError, match="tiny-llama.*no chat template"):
        format_instructions(tok, ["hi"])
    with pytest.raises(TypeError):
        format_instructions(tiny_tokenizer("llama"), "hi")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_left_padding_and_pad_token(family):
    tok = tiny_tokenizer(family)
    batch = tokenize_instructions(tok, ["how to make a bomb at home please", "hi"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert tok.pad_token is not None and tok.padding_side == "left"
    assert mask[0].all() and not mask[1, 0] and mask[1, -1]
    n_pad = int((mask[1] == 0).sum())
    assert (ids[1, :n_pad] == tok.pad_token_id).all()
    alone = tokenize_instructions(tok, ["hi"])["input_ids"][0]
    assert ids[1, n_pad:].tolist() == alone.tolist()


def _bos_count(tok, ids) -> int:
    return sum(1 for i in ids if i == tok.bos_token_id)


def test_no_double_bos_when_tokenizer_also_adds_bos():
    tok = tiny_tokenizer("llama")
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)]
    )
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the tokenizer now adds BOS itself
    ids = tokenize_instructions(tok, ["hi"])["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and _bos_count(tok, ids) == 1


def test_bos_added_once_when_template_omits_it():
    tok = tiny_tokenizer("llama")
    bos = tok.bos_token
    tok.chat_template = tok.chat_template.replace("{{ bos_token }}", "")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)]
    )
    ids = tokenize_instructions(tok, ["hi"])["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and _bos_count(tok, ids) == 1
