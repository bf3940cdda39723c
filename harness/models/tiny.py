"""Tiny random-init models, one per supported family, for CPU tests and benchmarks.

Configs keep the structural traits of the real checkpoints (tied vs untied embeddings, GQA,
sliding windows, MoE routing, Gemma embedding scale, soft-capping and post-norms, Qwen3.5's mix
of linear and full attention) at toy sizes. Tokenizers are byte-level BPE trained in memory on a
small corpus, with the family's special tokens and a chat template in the family's FORMAT.
"""

from __future__ import annotations

import functools

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

D_MODEL = 64
D_MLP = 96

_WORDS = (
    "how to make a bomb at home write poem about the sea explain why sky is blue give me recipe for cake "
    "steal car hack into email account tell story of cat list three fruits describe weather today "
    "what are best ways kill someone build weapon create virus synthesize drugs translate this sentence "
    "into french summarize article help with homework plan trip paris python code sort list numbers "
    "I can not cannot help with that request sorry but as an AI assistant model user system you are "
    "helpful harmless honest please thank yes no hello world question answer instructions step first "
    "second then finally good bad safe unsafe illegal legal people money time water fire food friend "
    "teach learn school book music song game play run walk fast slow big small red green old new "
    "Sure here is it this that what when where who which one two 1 2 3 4 5 . , ! ? : ; ' \" ( ) - "
)

# family -> (special tokens, bos, eos, pad, chat template). Templates copy the real ones' FORMAT only.
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}"
    "{% elif m['role'] == 'user' %}[INST] {{ ns.sys }}{{ m['content'] }} [/INST]{% set ns.sys = '' %}"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
_GEMMA = (
    "{{ bos_token }}{% set ns = namespace(sys='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\n\n' %}{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ ns.sys }}{{ m['content'] | trim }}<end_of_turn>\n{% set ns.sys = '' %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_GEMMA4 = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}\n{{ m['content'] | trim }}<turn|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)
_QWEN2 = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_QWEN3 = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
_HARMONY = (
    "<|start|>system<|message|>You are a helpful assistant.\nReasoning: medium<|end|>"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "<|start|>developer<|message|># Instructions\n\n{{ m['content'] }}<|end|>"
    "{% elif m['role'] == 'user' %}<|start|>user<|message|>{{ m['content'] }}<|end|>"
    "{% else %}<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}<|return|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)

_GEMMA_TOK = (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>")
_QWEN_TOK = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"], None, "<|im_end|>", "<|endoftext|>")
_TOKENIZERS: dict[str, tuple[tuple[list[str], str | None, str, str | None], str]] = {
    "llama": (
        (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
         "<|begin_of_text|>", "<|eot_id|>", None),
        _LLAMA3,
    ),
    "mistral": ((["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", None), _MISTRAL),
    "gemma": (_GEMMA_TOK, _GEMMA),
    "gemma2": (_GEMMA_TOK, _GEMMA),
    "gemma3": (_GEMMA_TOK, _GEMMA),
    "gemma4": ((["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"], "<bos>", "<eos>", "<pad>"), _GEMMA4),
    "qwen2": (_QWEN_TOK, _QWEN2),
    "qwen3": (_QWEN_TOK, _QWEN3),
    "qwen3_5": (_QWEN_TOK, _QWEN3),
    "gpt_oss": (
        (["<|startoftext|>", "<|endoftext|>", "<|start|>", "<|message|>", "<|end|>", "<|return|>", "<|channel|>"],
         "<|startoftext|>", "<|return|>", "<|endoftext|>"),
        _HARMONY,
    ),
}
# Turn-end tokens that also stop generation (as in the real generation configs).
_EXTRA_EOS = {f: "<end_of_turn>" for f in ("gemma", "gemma2", "gemma3")} | {"gemma4": "<turn|>", "gpt_oss": "<|endoftext|>"}

TINY_FAMILIES: list[str] = list(_TOKENIZERS)


@functools.cache
def _tokenizer_json(family: str) -> str:
    (specials, _bos, _eos, _pad), _template = _TOKENIZERS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    roles = "system user assistant model developer final analysis Instructions Reasoning medium "
    # Role names follow a special token with no space before them, so they are trained bare.
    corpus = [_WORDS, roles, "\n\n" * 50, "\n" * 50, " [INST] [/INST] # "] * 8 + roles.split() * 20
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A fresh tokenizer each call (callers may set pad tokens / padding side on it)."""
    _check_family(family)
    (_specials, bos, eos, pad), template = _TOKENIZERS[family]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)),
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        chat_template=template,
        name_or_path=f"tiny-{family}",
    )


def _check_family(family: str) -> None:
    if family not in _TOKENIZERS:
        raise ValueError(f"no tiny model for family {family!r}; available: {', '.join(TINY_FAMILIES)}")


def _config(family: str, tok: PreTrainedTokenizerFast) -> transformers.PretrainedConfig:
    ids = dict(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    common = dict(
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        **ids,
    )
    gemma_post = dict(hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16, tie_word_embeddings=True)
    sliding3 = ["sliding_attention", "sliding_attention", "full_attention"]
    if family == "llama":
        return transformers.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=8, tie_word_embeddings=False)
    if family == "gemma":
        return transformers.GemmaConfig(
            **common | dict(num_key_value_heads=1), hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True
        )
    if family == "gemma2":
        return transformers.Gemma2Config(
            **common, **gemma_post, sliding_window=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**common, **gemma_post, sliding_window=8, layer_types=sliding3)
    if family == "gemma4":
        return transformers.Gemma4TextConfig(
            **common,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            sliding_window=8,
            layer_types=sliding3,
            global_head_dim=32,
            vocab_size_per_layer_input=len(tok),
            hidden_size_per_layer_input=8,
            enable_moe_block=True,
            num_experts=4,
            top_k_experts=2,
            moe_intermediate_size=48,
        )
    if family == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, tie_word_embeddings=True)
    if family == "qwen3_5":
        return transformers.Qwen3_5TextConfig(
            **common | dict(num_hidden_layers=4),
            tie_word_embeddings=False,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            linear_conv_kernel_dim=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
        )
    if family == "gpt_oss":
        return transformers.GptOssConfig(
            **common | dict(max_position_embeddings=131072),
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            tie_word_embeddings=False,
        )
    raise AssertionError(family)


# Gemma2 soft-caps attention logits (eager only); gpt_oss attention sinks have no SDPA path.
_ATTN = {"gemma2": "eager", "gpt_oss": "eager"}


MULTIMODAL_FAMILIES = ("gemma3", "gemma4")


def _multimodal_config(family: str, text: transformers.PretrainedConfig) -> transformers.PretrainedConfig:
    """The image-text wrapper the real Gemma3/Gemma4 instruct checkpoints ship as."""
    if family == "gemma3":
        vision = transformers.SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
        )
        return transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    if family == "gemma4":
        return transformers.Gemma4Config(text_config=text.to_dict(), vision_config=None, audio_config=None)
    raise ValueError(f"no multimodal tiny model for family {family!r}; available: {', '.join(MULTIMODAL_FAMILIES)}")


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, multimodal: bool = False):
    """(model, tokenizer) with random weights from `seed`; eval mode, no grads. `multimodal`
    wraps the text model the way the real Gemma3/Gemma4 checkpoints are (model.language_model)."""
    _check_family(family)
    tok = tiny_tokenizer(family)
    config = _config(family, tok)
    if multimodal:
        config = _multimodal_config(family, config)
    config._attn_implementation = _ATTN.get(family, "sdpa")
    auto = transformers.AutoModelForImageTextToText if multimodal else transformers.AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=dtype)
        randomize_zero_inits(model)
    if family in _EXTRA_EOS:
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(_EXTRA_EOS[family])]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval().requires_grad_(False)
    return model, tok


@torch.no_grad()
def randomize_zero_inits(model: torch.nn.Module) -> None:
    """Give norms, biases and routers non-trivial values so tests exercise them (HF inits them to
    constants, which would hide e.g. post-norm leakage or a missed bias)."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and "norm" in name or name.endswith("scale") or name.endswith("per_expert_scale"):
            base = 0.0 if _zero_centered_norm(model) and "norm" in name else 1.0
            p.copy_(base + 0.2 * torch.randn_like(p))
        elif name.endswith("bias") or name.endswith("_bias") or "router" in name:
            p.copy_(0.05 * torch.randn_like(p))
        elif name.endswith("sinks"):
            p.copy_(torch.randn_like(p))
        elif p.abs().sum() == 0 or (p.ndim >= 2 and torch.all(p == p.flatten()[0])):
            p.copy_(0.02 * torch.randn_like(p))


def _zero_centered_norm(model: torch.nn.Module) -> bool:
    """Gemma 1-3 RMSNorms scale by (1 + weight), so their neutral weight is 0."""
    return model.config.model_type in ("gemma", "gemma2", "gemma3_text", "gemma3")
