"""Pinned chat formats on the REAL tokenizers (offline copies), completion parsing, and generation
of reasoning formats.

The real files come from $HARNESS_TOKENIZERS_DIR, else <repo>/../shared/tokenizers; without them
the real-tokenizer tests skip (fail under CI=true).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import lzma
import os
from pathlib import Path

import pytest
import torch
import transformers.utils.chat_template_utils as chat_template_utils
from transformers import AutoConfig, AutoTokenizer

from harness.config import GenerationConfig
from harness.generation import generate
from harness.generation.common import eos_token_ids
from harness.generation.completions import generate_tokens
from harness.generation.reasoning import Parsed, parse_completion
from harness.models.arch import FAMILIES, UnsupportedArchitecture
from harness.models.chat import (
    ChatFormat,
    chat_format,
    family_chat_defaults,
    family_chat_format,
    format_instructions,
    post_instruction_tokens,
    set_chat_format,
    tokenize_instructions,
)
from harness.models.tiny import tiny_model, tiny_tokenizer
from harness.models.tokenizer_files import (
    TOKENIZERS_ENV,
    TokenizerFilesError,
    has_config,
    has_tokenizer,
    local_model_files,
)
from harness.steering.selection import refusal_token_ids

REPO = Path(__file__).resolve().parent.parent
QWEN3, GPT_OSS, LLAMA3, GEMMA = (
    "Qwen/Qwen3-8B",
    "openai/gpt-oss-20b",
    "meta-llama/Meta-Llama-3-8B-Instruct",
    "google/gemma-2b-it",
)
HARMONY_FINAL = "<|channel|>final<|message|>"
USER = [{"role": "user", "content": "Hello"}]


# ---- the real files -----------------------------------------------------------------------------


def _tokenizers_root() -> Path:
    env = os.environ.get(TOKENIZERS_ENV)
    return Path(env) if env else REPO.parent / "shared" / "tokenizers"


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the real tokenizers are required)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def real_dir(real_cache):
    """model id -> its readable directory (decompressed into a session cache)."""

    @functools.cache
    def get(model_id: str) -> Path:
        root = _tokenizers_root()
        if not root.is_dir():
            _missing(f"no real tokenizers at {root} (set {TOKENIZERS_ENV})")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HARNESS_CACHE_DIR", str(real_cache))
            path = local_model_files(model_id, root)
        if path is None:
            _missing(f"{root} has no folder for {model_id}")
        return path

    return get


@pytest.fixture(scope="session")
def real_tok(real_dir):
    """model id -> its tokenizer (loaded once; tests set the chat format they need)."""

    @functools.cache
    def get(model_id: str):
        path = real_dir(model_id)
        if not has_tokenizer(path):
            _missing(f"{path} has no tokenizer.json")
        return AutoTokenizer.from_pretrained(path)

    return get


def _with(tok, fmt: ChatFormat):
    set_chat_format(tok, fmt)
    return tok


@pytest.fixture
def qwen3(real_tok):
    return _with(real_tok(QWEN3), family_chat_format("qwen3"))


@pytest.fixture
def gpt_oss(real_tok):
    return _with(real_tok(GPT_OSS), family_chat_format("gpt_oss"))


@pytest.fixture
def llama3(real_tok):
    return _with(real_tok(LLAMA3), family_chat_format("llama"))


def test_real_files_load_and_encode_the_published_checks(real_tok, real_dir):
    """SOURCE.md's checks: "Hello world" -> these ids; configs read by AutoConfig where present."""
    expected = {GPT_OSS: [13225, 2375], QWEN3: [9707, 1879], LLAMA3: [9906, 1917]}
    for model_id, ids in expected.items():
        assert real_tok(model_id)("Hello world", add_special_tokens=False)["input_ids"] == ids
    assert AutoConfig.from_pretrained(real_dir(QWEN3)).model_type == "qwen3"
    assert AutoConfig.from_pretrained(real_dir(GPT_OSS)).model_type == "gpt_oss"
    gemma = real_dir(GEMMA)
    assert has_config(gemma) and not has_tokenizer(gemma)
    assert not has_config(real_dir(LLAMA3))


# ---- Qwen3 ---------------------------------------------------------------------------------------


def test_qwen3_scored_prompt_has_the_empty_think_block(qwen3):
    (text,) = format_instructions(qwen3, ["Hello"])
    assert text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = post_instruction_tokens(qwen3)
    assert ids == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
    assert qwen3.decode(ids) == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tokenize_instructions(qwen3, ["write a poem"])["input_ids"][0, -len(ids):].tolist() == ids


def test_qwen3_explicit_kwargs_win_over_the_format(qwen3):
    (text,) = format_instructions(qwen3, ["Hello"], enable_thinking=True)
    assert text.endswith("<|im_start|>assistant\n")


def test_qwen3_refusal_tokens(qwen3):
    openings = family_chat_defaults("qwen3")["refusal_tokens"]
    assert openings == ("I", "As")
    assert refusal_token_ids(qwen3, openings) == [40, 2121]
    assert qwen3.convert_ids_to_tokens([40, 2121]) == ["I", "As"]


# ---- gpt-oss -------------------------------------------------------------------------------------


def _clock_at(monkeypatch, day: dt.datetime) -> None:
    """Move the clock that transformers' `strftime_now` reads."""

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(day.year, day.month, day.day, day.hour, day.minute)

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


def test_gpt_oss_prompt_has_low_effort_and_pinned_date(gpt_oss):
    (text,) = format_instructions(gpt_oss, ["Hello"])
    assert "Reasoning: low" in text and "Reasoning: medium" not in text
    assert "Current date: 2026-01-01\n" in text
    assert text.endswith("<|start|>user<|message|>Hello<|end|><|start|>assistant<|channel|>final<|message|>")
    other = _with(gpt_oss, ChatFormat({"reasoning_effort": "low"}, date="2025-03-04"))
    assert "Current date: 2025-03-04\n" in format_instructions(other, ["Hello"])[0]


def test_gpt_oss_prompt_does_not_move_with_the_clock(gpt_oss, monkeypatch):
    prompts, plain = [], []
    for day in (dt.datetime(2025, 8, 8, 9, 0), dt.datetime(2031, 12, 24, 23, 59)):
        _clock_at(monkeypatch, day)
        prompts.append(format_instructions(gpt_oss, ["Hello"]))
        plain.append(gpt_oss.apply_chat_template(USER, tokenize=False, add_generation_prompt=True))
    assert prompts[0] == prompts[1]
    assert plain[0] != plain[1]  # without the pin the clock shows through (the monkeypatch works)
    assert "Current date: 2031-12-24" in plain[1]


def test_pinned_render_equals_plain_render_on_the_pinned_day(gpt_oss, monkeypatch):
    """The date pin changes nothing but the date (every byte else is the template's own)."""
    _clock_at(monkeypatch, dt.datetime(2026, 1, 1, 15, 30))
    for system in (None, "Be brief."):
        messages = ([{"role": "system", "content": system}] if system else []) + USER
        plain = gpt_oss.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, reasoning_effort="low"
        )
        assert format_instructions(gpt_oss, ["Hello"], system, answer_prefix=False) == [plain]


def test_gpt_oss_post_instruction_tokens_end_in_the_final_channel(gpt_oss):
    ids = post_instruction_tokens(gpt_oss)
    assert ids == [200007, 200006, 173781, 200005, 17196, 200008]
    assert gpt_oss.decode(ids) == "<|end|><|start|>assistant<|channel|>final<|message|>"
    assert gpt_oss.decode(post_instruction_tokens(gpt_oss, answer_prefix=False)) == "<|end|><|start|>assistant"
    batch = tokenize_instructions(gpt_oss, ["Hello", "how are you today"])
    assert batch["input_ids"][0, -len(ids):].tolist() == ids == batch["input_ids"][1, -len(ids):].tolist()


def test_gpt_oss_refusal_token_is_the_first_answer_token(gpt_oss):
    """selection.refusal_token_ids formats with the answer prefix, so "I" is counted in the final channel."""
    assert family_chat_defaults("gpt_oss")["refusal_tokens"] == ("I",)
    assert format_instructions(gpt_oss, ["Hello"])[0].endswith(HARMONY_FINAL)
    assert refusal_token_ids(gpt_oss, ("I",)) == [40]
    prompt = format_instructions(gpt_oss, ["Hello"])[0]
    full = gpt_oss(prompt + "I can't help with that.", add_special_tokens=False)["input_ids"]
    n_prompt = len(gpt_oss(prompt, add_special_tokens=False)["input_ids"])
    assert full[n_prompt - 1] == 200008 and full[n_prompt] == 40  # <|message|> then "I"


# ---- Llama 3 -------------------------------------------------------------------------------------


def test_llama3_prompt_single_bos_and_refusal_id(llama3):
    (text,) = format_instructions(llama3, ["Hello"])
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenize_instructions(llama3, ["Hello"])["input_ids"][0].tolist()
    assert ids[0] == llama3.bos_token_id == 128000 and ids.count(128000) == 1
    suffix = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert llama3.decode(post_instruction_tokens(llama3)) == suffix
    assert refusal_token_ids(llama3, family_chat_defaults("llama")["refusal_tokens"]) == [40]


def test_templates_without_a_date_are_rendered_unchanged(qwen3, llama3):
    for tok in (qwen3, llama3):
        plain = tok.apply_chat_template(USER, tokenize=False, add_generation_prompt=True, **chat_format(tok).kwargs())
        assert format_instructions(tok, ["Hello"]) == [plain]


# ---- ChatFormat and family defaults ------------------------------------------------------------


def test_chat_format_is_hashable_and_describable():
    a = ChatFormat({"b": 1, "a": False}, answer_prefix="x", reasoning="think")
    b = ChatFormat((("a", False), ("b", 1)), answer_prefix="x", reasoning="think")
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    assert a.describe() == {"template_kwargs": {"a": False, "b": 1}, "date": "2026-01-01", "answer_prefix": "x",
                            "reasoning": "think"}
    assert chat_format(tiny_tokenizer("llama")) == ChatFormat()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(date="01/02/2026"), "ChatFormat.date"),
        (dict(date="2026-02-30"), "day is out of range"),
        (dict(reasoning="cot"), "ChatFormat.reasoning 'cot'"),
        (dict(template_kwargs={"x": [1]}), r"template_kwargs\['x'\]"),
        (dict(template_kwargs={"strftime_now": "x"}), "'strftime_now'"),
    ],
)
def test_chat_format_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChatFormat(**kwargs)


def test_set_chat_format_type_and_strftime_kwarg_errors():
    tok = tiny_tokenizer("llama")
    with pytest.raises(TypeError, match="needs a ChatFormat"):
        set_chat_format(tok, {"date": "2026-01-01"})
    with pytest.raises(TypeError, match="pinned by the tokenizer's ChatFormat.date"):
        format_instructions(tok, ["hi"], strftime_now=lambda f: "x")


def test_family_defaults_cover_every_family():
    for family in FAMILIES:
        d = family_chat_defaults(family)
        assert set(d) == {"refusal_tokens", "template_kwargs", "reasoning", "answer_prefix"}
        expected_tokens = ("I", "As") if family in ("qwen2", "qwen3", "qwen3_5") else ("I",)
        assert d["refusal_tokens"] == expected_tokens
    assert family_chat_defaults("qwen3_5")["template_kwargs"] == {"enable_thinking": False}
    assert family_chat_defaults("gpt_oss") == {"refusal_tokens": ("I",), "template_kwargs": {"reasoning_effort": "low"},
                                               "reasoning": "harmony", "answer_prefix": HARMONY_FINAL}
    assert family_chat_defaults("gemma2") == {"refusal_tokens": ("I",), "template_kwargs": {}, "reasoning": "none",
                                              "answer_prefix": ""}
    family_chat_defaults("qwen3")["template_kwargs"]["enable_thinking"] = True  # a copy: the table is unchanged
    assert family_chat_defaults("qwen3")["template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(UnsupportedArchitecture, match="'phi3'"):
        family_chat_defaults("phi3")


def test_a_non_literal_strftime_format_is_a_clear_error():
    tok = tiny_tokenizer("llama")
    tok.chat_template = "{% set f = '%Y' %}{{ strftime_now(f) }}{{ messages[0]['content'] }}"
    with pytest.raises(Exception, match="strftime_now with %Y"):
        format_instructions(tok, ["hi"])
    tok.chat_template = "\n{{ strftime_now('%d %b %Y') }}|{{ messages[0]['content'] }}"
    assert format_instructions(tok, ["hi"]) == ["\n01 Jan 2026|hi"]  # a leading newline survives the pin


# ---- parse_completion ----------------------------------------------------------------------------


def test_parse_none_is_the_raw_text():
    assert parse_completion(" I can't <think>", "none") == Parsed(" I can't <think>", "", True)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("<think>\nThe user wants a poem.\n</think>\n\nHere is a poem.",
         Parsed("Here is a poem.", "The user wants a poem.", True)),
        ("<think>\n\n</think>\n\nI can't help.", Parsed("I can't help.", "", True)),
        ("<think>\nLet me think about this step by", Parsed("", "Let me think about this step by", False)),
        ("Sure, here it is.", Parsed("Sure, here it is.", "", True)),
        ("plan\n</think>\n\nAnswer.<|im_end|>", Parsed("Answer.", "plan", True)),
    ],
)
def test_parse_think(raw, expected):
    assert parse_completion(raw, "think") == expected


HARMONY_RAW = (
    "<|channel|>analysis<|message|>The user asks for a bomb. Must refuse.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>I can’t help with that.<|return|>"
)


def test_parse_harmony_channels():
    assert parse_completion(HARMONY_RAW, "harmony") == Parsed(
        "I can’t help with that.", "The user asks for a bomb. Must refuse.", True
    )
    truncated = "<|channel|>analysis<|message|>We need to consider whether"
    assert parse_completion(truncated, "harmony") == Parsed("", "We need to consider whether", False)
    tool = (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}<|call|>"
    )
    parsed = parse_completion(tool, "harmony")
    assert not parsed.reached_answer and "Need weather." in parsed.reasoning and "Paris" in parsed.reasoning
    cut_final = "<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>final<|message|>Here is the first"
    assert parse_completion(cut_final, "harmony") == Parsed("Here is the first", "ok", True)


def test_parse_harmony_after_an_answer_prefix():
    assert parse_completion("I can’t help with that.<|return|>", "harmony", prompt_ends_in_answer=True) == Parsed(
        "I can’t help with that.", "", True
    )
    assert parse_completion("I can’t help with that.", "harmony") == Parsed("", "I can’t help with that.", False)
    assert parse_completion("<|end|>", "harmony", prompt_ends_in_answer=True) == Parsed("", "", True)
    # A completion that opens its own channel is parsed by its channels, whatever the prompt ended in.
    truncated = "<|channel|>analysis<|message|>We need to consider whether"
    parsed = parse_completion(truncated, "harmony", prompt_ends_in_answer=True)
    assert parsed == Parsed("", "We need to consider whether", False)
    assert parse_completion(HARMONY_RAW, "harmony", prompt_ends_in_answer=True).answer == "I can’t help with that."


def test_parse_harmony_strips_other_special_tokens():
    raw = "<|channel|>final<|message|>Hello<|reserved_200013|> there<|constrain|>"
    assert parse_completion(raw, "harmony").answer == "Hello there"


def test_parse_unknown_kind():
    with pytest.raises(ValueError, match="unknown completion kind 'xml'.*none, think, harmony"):
        parse_completion("x", "xml")


def test_parse_harmony_decoded_by_the_real_tokenizer(gpt_oss):
    """Tokenized and decoded by gpt-oss's tokenizer the way generation does (EOS cut, specials kept)."""
    ids = gpt_oss(HARMONY_RAW, add_special_tokens=False)["input_ids"]
    assert 200005 in ids and ids[-1] == 200002  # <|channel|> and <|return|> are single special tokens
    ids = ids[: ids.index(200002)]  # generation cuts at EOS (<|return|>)
    raw = gpt_oss.decode(ids, skip_special_tokens=False)
    assert parse_completion(raw, "harmony") == Parsed(
        "I can’t help with that.", "The user asks for a bomb. Must refuse.", True
    )
    skipped = gpt_oss.decode(ids, skip_special_tokens=True)  # what plain decoding would hand the parser
    assert not parse_completion(skipped, "harmony").reached_answer


def test_harmony_header_without_a_channel_keeps_its_answer(gpt_oss):
    """gpt-oss's generation prompt ends in `<|start|>assistant` (the real template); a model that writes its message
    without a channel tag, right there or after its analysis, has answered: the text is the answer, not lost."""
    generation_prompt = gpt_oss.apply_chat_template(USER, tokenize=False, add_generation_prompt=True)
    assert generation_prompt.endswith("<|start|>assistant")
    for script, reasoning in (("<|message|>Hello! How can I help?<|return|>", ""),
                              ("<|channel|>analysis<|message|>Greet back.<|end|><|start|>assistant<|message|>"
                               "Hello! How can I help?<|return|>", "Greet back.")):
        ids = gpt_oss(script, add_special_tokens=False)["input_ids"]
        assert 200008 in ids  # <|message|> is one special token
        raw = gpt_oss.decode(ids[: ids.index(200002)], skip_special_tokens=False)  # generation cuts at <|return|>
        assert parse_completion(raw, "harmony") == Parsed("Hello! How can I help?", reasoning, True)
    # a header that names another role is not the assistant's answer
    assert not parse_completion("<|start|>user<|message|>hi", "harmony").reached_answer


def test_short_response_words_count_as_the_reference_on_a_real_decode(llama3):
    """The reference judges `decode(generation, skip_special_tokens=True).strip()` and counts
    `len(response.split(" "))`: decoded here by Llama 3's own tokenizer, the count is the same whatever whitespace
    or special tokens surround the answer (the old count, unstripped, added a word per edge space)."""
    from harness.judges.llamaguard import response_words

    fourteen = "I cannot help with that, but I can suggest some safe resources instead."
    assert len(fourteen.split(" ")) == 13
    for text, words in ((fourteen, 13), ("  " + fourteen + " Okay?\n", 14), ("\n\n" + fourteen + "\n", 13)):
        ids = llama3(text + "<|eot_id|>", add_special_tokens=False)["input_ids"]
        answer = parse_completion(llama3.decode(ids, skip_special_tokens=True), "none").answer
        assert "<|eot_id|>" not in answer
        assert response_words(answer) == words == len(answer.strip().split(" "))
    assert len(("  " + fourteen + " Okay?\n").split(" ")) == 16  # what the unstripped count gave


# ---- generation with reasoning formats -----------------------------------------------------------


def _scripted(model, tok, script: str):
    """Make `model` emit `script`'s tokens one per step (a logit boost on lm_head); records each
    forward's input ids so the prompt can be checked."""
    ids = tok(script, add_special_tokens=False)["input_ids"]
    seen: list[torch.Tensor] = []
    step = {"n": 0}

    def pre(module, args, kwargs):
        seen.append(kwargs.get("input_ids"))

    def hook(module, args, out):
        k = min(step["n"], len(ids) - 1)
        out = out.clone()
        out[:, -1, ids[k]] += 1e4
        step["n"] += 1
        return out

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.lm_head.register_forward_hook(hook)
    return seen


PROMPTS = ["write poem about the sea", "hi"]
HARMONY_SCRIPT = (
    "<|channel|>analysis<|message|>first then<|end|>"
    "<|start|>assistant<|channel|>final<|message|>I can not help<|return|>"
)


def _real_gpt_oss_eos(model, tok) -> None:
    """The real generation config's EOS ids (<|return|>, <|endoftext|>): <|end|> closes one channel
    message, not the completion (the tiny model also stops at <|end|>, which would end at the analysis)."""
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(["<|return|>", "<|endoftext|>"])


def test_real_gpt_oss_does_not_stop_at_the_end_of_a_channel(real_dir):
    from transformers import GenerationConfig as HFGenerationConfig

    eos = HFGenerationConfig.from_pretrained(real_dir(GPT_OSS)).eos_token_id
    assert eos == [200002, 199999]  # <|return|>, <|endoftext|>; not <|end|> (200007)


@pytest.mark.parametrize("backend", ["transformers", "static"])
def test_generate_keeps_harmony_markers_and_prompts_without_the_answer_prefix(backend):
    model, tok = tiny_model("gpt_oss")
    _real_gpt_oss_eos(model, tok)
    set_chat_format(tok, family_chat_format("gpt_oss"))
    seen = _scripted(model, tok, HARMONY_SCRIPT)
    settings = GenerationConfig(backend=backend, max_new_tokens=40, batch_size=2)
    texts = generate(model, tok, PROMPTS, settings, progress=False)
    assert texts == [HARMONY_SCRIPT.removesuffix("<|return|>")] * 2  # cut at EOS, markers kept
    assert parse_completion(texts[0], "harmony") == Parsed("I can not help", "first then", True)
    prompt = tok.decode(seen[0][0])
    assert prompt.endswith("<|start|>assistant") and not prompt.endswith(HARMONY_FINAL)


def test_generate_keeps_specials_for_think_and_drops_pad():
    model, tok = tiny_model("qwen3")
    set_chat_format(tok, ChatFormat(reasoning="think"))  # thinking on, as generation runs it
    script = "<think>\nfirst then\n</think>\n\n<|im_start|>Sure<|endoftext|> here is<|im_end|>"
    _scripted(model, tok, script)
    texts = generate(model, tok, PROMPTS, GenerationConfig(backend="static", max_new_tokens=30), progress=False)
    assert tok.pad_token == "<|endoftext|>"
    ids = tok(script, add_special_tokens=False)["input_ids"][:-1]  # cut at <|im_end|>
    assert texts == [tok.decode(ids).replace("<|endoftext|>", "")] * 2
    assert "<|im_start|>" in texts[0] and "<|endoftext|>" not in texts[0]
    assert parse_completion(texts[0], "think") == Parsed("Sure here is", "first then", True)


@pytest.mark.parametrize("family, fmt", [("qwen3", ChatFormat({"enable_thinking": False})), ("llama", None)])
def test_generate_without_reasoning_is_unchanged(family, fmt):
    model, tok = tiny_model(family)
    if fmt is not None:
        set_chat_format(tok, fmt)
    settings = GenerationConfig(backend="static", max_new_tokens=12, batch_size=2)
    texts = generate(model, tok, PROMPTS, settings, progress=False)
    enc = tokenize_instructions(tok, PROMPTS)
    rows = generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=12,
                           eos_token_ids=eos_token_ids(model, tok), backend="static")
    assert texts == tok.batch_decode(rows, skip_special_tokens=True)


def test_generate_strips_harmony_markers_without_a_reasoning_format():
    """The same scripted completion, with no ChatFormat: decoded as before (special tokens skipped)."""
    model, tok = tiny_model("gpt_oss")
    _real_gpt_oss_eos(model, tok)
    _scripted(model, tok, HARMONY_SCRIPT)
    texts = generate(model, tok, PROMPTS, GenerationConfig(backend="static", max_new_tokens=40), progress=False)
    ids = tok(HARMONY_SCRIPT, add_special_tokens=False)["input_ids"][:-1]
    assert texts == [tok.decode(ids, skip_special_tokens=True)] * 2
    assert texts[0] == "analysisfirst thenassistantfinalI can not help"


# ---- tokenizer_files -----------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_root(tmp_path: Path, payload: bytes = b'{"tok": 1}', listed: bytes | None = None) -> Path:
    root = tmp_path / "tokenizers"
    folder = root / "Tiny-Model-7B"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json.xz").write_bytes(lzma.compress(payload))
    config = b'{"model_type": "llama"}'
    (folder / "config.json").write_bytes(config)
    (root / "SHA256SUMS").write_text(
        f"{_sha(listed if listed is not None else payload)}  Tiny-Model-7B/tokenizer.json\n"
        f"{_sha(config)}  Tiny-Model-7B/config.json\n"
    )
    return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_local_files_decompress_into_a_content_keyed_cache(tmp_path, cache_dir):
    root = _fake_root(tmp_path)
    path = local_model_files("someone/tiny-model-7b", root)
    assert path is not None and path.is_relative_to(cache_dir / "tokenizer_files")
    assert (path / "tokenizer.json").read_bytes() == b'{"tok": 1}' and has_tokenizer(path) and has_config(path)
    assert local_model_files("Tiny-Model-7B", root) == path  # reused
    (path / "tokenizer.json").write_bytes(b"damaged")
    assert local_model_files("Tiny-Model-7B", root) == path
    assert (path / "tokenizer.json").read_bytes() == b'{"tok": 1}'  # rebuilt, not trusted


def test_changed_source_gets_a_new_cache_dir(tmp_path, cache_dir):
    root = _fake_root(tmp_path)
    first = local_model_files("x/Tiny-Model-7B", root)
    new = b'{"tok": 2}'
    (root / "Tiny-Model-7B" / "tokenizer.json.xz").write_bytes(lzma.compress(new))
    (root / "SHA256SUMS").write_text(f"{_sha(new)}  Tiny-Model-7B/tokenizer.json\n")
    second = local_model_files("x/Tiny-Model-7B", root)
    assert second != first and (second / "tokenizer.json").read_bytes() == new


def test_sha_mismatch_names_file_expected_and_actual(tmp_path, cache_dir):
    root = _fake_root(tmp_path, payload=b"tampered", listed=b"original")
    with pytest.raises(TokenizerFilesError) as err:
        local_model_files("Tiny-Model-7B", root)
    message = str(err.value)
    assert "tokenizer.json.xz" in message and _sha(b"original") in message and _sha(b"tampered") in message
    assert not [p for p in (cache_dir / "tokenizer_files").iterdir() if p.is_dir()]  # nothing half-built left


def test_folder_sums_and_plain_folders(tmp_path, cache_dir):
    root = tmp_path / "r"
    (root / "plain").mkdir(parents=True)
    (root / "plain" / "config.json").write_text("{}")
    assert local_model_files("org/PLAIN", root) == root / "plain"  # nothing to decompress: served in place
    (root / "plain" / "SHA256SUMS").write_text(f"{'0' * 64}  config.json\n")
    with pytest.raises(TokenizerFilesError, match=r"config.json has sha256 .* SHA256SUMS expects 0{64}"):
        local_model_files("org/plain", root)


def test_no_root_or_no_folder_is_none(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKENIZERS_ENV, raising=False)
    assert local_model_files("Qwen/Qwen3-8B") is None
    assert local_model_files("Qwen/Qwen3-8B", tmp_path / "absent") is None
    assert local_model_files("Qwen/Qwen3-8B", tmp_path) is None
    monkeypatch.setenv(TOKENIZERS_ENV, str(_fake_root(tmp_path)))
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    assert local_model_files("a/tiny-model-7b") is not None
