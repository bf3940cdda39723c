"""Capability metrics on a tiny random Llama with an in-memory word-level tokenizer (no downloads)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.data.capability_sets import CapabilityDataError, load_capability_set, load_text_set, questions_from_frame
from harness.measures.capability import answer_tokens, cross_entropy, mmlu_prompt, multiple_choice_accuracy
from harness.models.logits import cache_keyword, last_position_logits, next_token_kl, returned_cache
from harness.models.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer

DATA = Path(__file__).resolve().parent.parent / "data" / "capability"

QUESTIONS = [
    {"question": "What is two plus two?", "choices": ["three", "four", "five", "six"], "answer": 1},
    {"question": "Which gas do plants absorb?", "choices": ["oxygen", "carbon dioxide", "helium"], "answer": 1},
    {"question": "Water boils at sea level at?", "choices": ["50 C", "100 C", "150 C", "200 C", "0 C"], "answer": 1},
    {"question": "Red?", "choices": ["colour", "animal"], "answer": 0},
    {"question": "Which planet is closest to the Sun in our solar system?", "choices": ["Mercury", "Venus", "Earth", "Mars"], "answer": 0},
    {"question": "How many legs does an insect have?", "choices": ["four", "six", "eight", "ten"], "answer": 1},
    {"question": "The capital of France is?", "choices": ["Paris", "Rome", "Madrid", "Berlin"], "answer": 0, "subject": "geography"},
]
TEXTS = [
    "The river runs past the old mill and into the valley.",
    "Bread rises because yeast makes gas.",
    "A short one.",
    "Libraries lend books, maps and music to anyone with a card, and many also run reading groups.",
    "Hi",
]


def _word_tokenizer() -> PreTrainedTokenizerFast:
    corpus = " ".join(
        [json.dumps(QUESTIONS), " ".join(TEXTS), "The following are multiple choice questions (with answers) about"]
    )
    words = sorted(set(re.findall(r"\w+|[^\w\s]", corpus)) | set("ABCDEFGHIJ"))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(config).eval()


def _single_logits(model, ids: list[int]) -> torch.Tensor:
    """[seq, vocab] logits of one unpadded sequence."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


# --- prompt format ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cache_keyword_is_what_the_forward_takes(family):
    """The harness hands KV caches to `forward` under the name this transformers version declares (`cache` from 5.24,
    where `past_key_values` is a deprecated alias until 5.40), and reads the returned one under either name."""
    import inspect

    model, tok = tiny_model(family)
    keyword = cache_keyword(model)
    assert keyword in inspect.signature(type(model).forward).parameters
    ids = tok(["hello there"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    assert returned_cache(out) is not None and returned_cache(out) is getattr(out, keyword)


def test_mmlu_prompt_format():
    shot = {"question": "1+1?", "choices": ["2", "3"], "answer": 0}
    item = {"question": "Sky colour?", "choices": ["blue", "green", "red"], "answer": 0, "subject": "high_school_physics"}
    expected = (
        "The following are multiple choice questions (with answers) about high school physics.\n\n"
        "1+1?\nA. 2\nB. 3\nAnswer: A\n\n"
        "Sky colour?\nA. blue\nB. green\nC. red\nAnswer:"
    )
    assert mmlu_prompt(item, [shot]) == expected


def test_answer_tokens_are_the_letter_tokens(tokenizer):
    shared, ids = answer_tokens(tokenizer, 5)
    assert shared == []
    assert ids == tokenizer.convert_tokens_to_ids(list("ABCDE"))


def test_answer_tokens_with_a_separate_space_token():
    """Byte-level BPE without merges: " A" is [space, A]; the space is shared, the letter is scored."""
    tok = tiny_tokenizer("qwen2")
    shared, ids = answer_tokens(tok, 4)
    assert shared == tok("Answer: ", add_special_tokens=False)["input_ids"][-1:]
    assert [tok.decode([i]) for i in ids] == list("ABCD")


def test_answer_tokens_reject_letters_that_share_a_token():
    vocab = {"<unk>": 0, "Answer": 1, ":": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(ValueError, match="share token ids"):
        answer_tokens(fast, 2)  # every letter is <unk>


# --- accuracy -----------------------------------------------------------------------------------


def test_padded_puts_the_pads_on_the_side_asked():
    from harness.models.logits import padded

    ids, mask = padded([[5, 6], [7]], 0, "right")
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, mask = padded([[5, 6], [7]], 0, "left")
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="side"):
        padded([[5]], 0, "middle")


def test_batched_left_padded_accuracy_equals_one_by_one(model, tokenizer):
    """Brute force: each prompt alone, unpadded, argmax over its own letters."""
    result = multiple_choice_accuracy(model, tokenizer, QUESTIONS, n_shot=2, batch_size=3, progress=False)
    _, letters = answer_tokens(tokenizer, 5)
    expected = []
    for i, q in enumerate(QUESTIONS):
        shots = [s for j, s in enumerate(QUESTIONS) if j != i][:2]
        ids = tokenizer(mmlu_prompt(q, shots))["input_ids"]
        last = torch.log_softmax(_single_logits(model, ids)[-1], -1)
        expected.append(int(last[letters[: len(q["choices"])]].argmax()))
        # The values too: a random model's argmax is often the same letter for every question.
        assert result["logprobs"][i] == pytest.approx(last[letters[: len(q["choices"])]].tolist(), abs=1e-4)
    assert result["predicted"] == expected
    assert result["correct"] == [p == q["answer"] for p, q in zip(expected, QUESTIONS)]
    assert result["n"] == len(QUESTIONS)
    assert result["accuracy"] == pytest.approx(sum(result["correct"]) / len(QUESTIONS))


def test_accuracy_with_shared_space_token_equals_one_by_one():
    """Tiny Qwen2 (byte-level, no merges): each prompt alone is scored after "Answer: "."""
    model, tok = tiny_model("qwen2")
    questions = QUESTIONS[:5]
    result = multiple_choice_accuracy(model, tok, questions, n_shot=1, batch_size=2, progress=False)
    shared, letters = answer_tokens(tok, 5)
    expected = []
    for i, q in enumerate(questions):
        shots = [s for j, s in enumerate(questions) if j != i][:1]
        ids = tok(mmlu_prompt(q, shots) + " ")["input_ids"]
        assert ids[-len(shared):] == shared
        last = _single_logits(model, ids)[-1]
        expected.append(int(last[letters[: len(q["choices"])]].argmax()))
    assert result["predicted"] == expected


def test_accuracy_follows_a_forced_answer_letter(model, tokenizer):
    """An lm_head whose bias always picks " C": accuracy is the share of questions whose answer is C."""
    c_id = answer_tokens(tokenizer, 3)[1][2]
    forced = LlamaForCausalLM(model.config).eval()
    forced.load_state_dict(model.state_dict())
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[c_id] = 10.0
    forced.lm_head = head
    all_c = [dict(q, answer=2) for q in QUESTIONS if len(q["choices"]) >= 3]
    assert multiple_choice_accuracy(forced, tokenizer, all_c, n_shot=1, progress=False)["accuracy"] == 1.0
    mixed = [dict(q, answer=i % 3) for i, q in enumerate(all_c)]
    result = multiple_choice_accuracy(forced, tokenizer, mixed, n_shot=1, progress=False)
    assert result["predicted"] == [2] * len(mixed)
    assert result["accuracy"] == pytest.approx(sum(q["answer"] == 2 for q in mixed) / len(mixed))


def test_accuracy_uses_given_shots(model, tokenizer):
    shots = QUESTIONS[:2]
    a = multiple_choice_accuracy(model, tokenizer, QUESTIONS[2:], n_shot=2, shots=shots, batch_size=2, progress=False)
    b = multiple_choice_accuracy(model, tokenizer, QUESTIONS[2:], n_shot=2, shots=shots, batch_size=5, progress=False)
    la, lb = a.pop("logprobs"), b.pop("logprobs")  # batch shapes move the last float digits only
    assert a == b and all(torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-5) for x, y in zip(la, lb))
    with pytest.raises(ValueError, match="n_shot=3 but only 2 shots"):
        multiple_choice_accuracy(model, tokenizer, QUESTIONS, n_shot=3, shots=shots, progress=False)


def test_accuracy_rejects_bad_question(model, tokenizer):
    bad = [dict(QUESTIONS[0], answer=7)]
    with pytest.raises(CapabilityDataError, match=r"questions\[0\].*'answer'"):
        multiple_choice_accuracy(model, tokenizer, bad, n_shot=0, progress=False)


# --- cross-entropy ------------------------------------------------------------------------------


def test_cross_entropy_equals_manual_token_mean(model, tokenizer):
    losses, count = 0.0, 0
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < 2:
            continue
        logits = _single_logits(model, ids)
        losses += F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
        count += len(ids) - 1
    got = cross_entropy(model, tokenizer, TEXTS, batch_size=2)
    assert got == pytest.approx(losses / count, rel=1e-5)


def test_cross_entropy_truncates(model, tokenizer):
    text = TEXTS[3]
    ids = tokenizer(text)["input_ids"][:5]
    logits = _single_logits(model, ids)
    manual = F.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    assert cross_entropy(model, tokenizer, [text], max_length=5) == pytest.approx(manual, rel=1e-5)


def test_cross_entropy_rejects_empty(model, tokenizer):
    with pytest.raises(ValueError, match="at least one text"):
        cross_entropy(model, tokenizer, [])


# --- KL -----------------------------------------------------------------------------------------


def test_kl_zero_for_equal_logits():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(next_token_kl(logits, logits), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(next_token_kl(logits, logits + 3.0), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_kl_matches_torch_kl_div():
    gen = torch.Generator().manual_seed(2)
    p, q = torch.randn(6, 40, generator=gen) * 3, torch.randn(6, 40, generator=gen) * 3
    ours = next_token_kl(p, q)
    reference = F.kl_div(
        torch.log_softmax(q.double(), -1), torch.log_softmax(p.double(), -1), log_target=True, reduction="none"
    ).sum(-1)
    assert torch.allclose(ours, reference, atol=1e-12)
    assert (ours > 0).all()
    assert not torch.allclose(ours, next_token_kl(q, p))  # direction matters: KL(p||q), not KL(q||p)


def test_kl_handles_masked_logits_and_bad_shapes():
    p = torch.tensor([[0.0, -torch.inf, 1.0]])
    q = torch.tensor([[0.5, 0.0, 1.0]])
    kl = next_token_kl(p, q)
    assert torch.isfinite(kl).all() and kl.item() > 0
    with pytest.raises(ValueError, match="equal shape"):
        next_token_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_last_position_logits_plain_equals_one_by_one(model, tokenizer):
    prompts = TEXTS[:4]
    got = last_position_logits(model, tokenizer, prompts, chat=False, batch_size=3)
    expected = torch.stack([_single_logits(model, tokenizer(p)["input_ids"])[-1] for p in prompts])
    assert got.shape == (len(prompts), model.config.vocab_size)
    assert torch.allclose(got, expected, atol=1e-5)


def test_last_position_logits_chat_uses_chat_module(model, tokenizer):
    chat = pytest.importorskip("harness.models.chat", reason="harness.models.chat not written yet")
    tok = _word_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    prompts = TEXTS[:3]
    enc = chat.tokenize_instructions(tok, prompts)
    got = last_position_logits(model, tok, prompts, chat=True, batch_size=2)
    expected = []
    for row in range(len(prompts)):
        ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        expected.append(_single_logits(model, ids)[-1])
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)


# --- data files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mmlu_demo.jsonl", "arc_demo.jsonl"])
def test_project_sets_load(name):
    items = load_capability_set(DATA / name)
    assert len(items) >= 30
    assert all("subject" in item for item in items)
    assert len({item["question"] for item in items}) == len(items)
    answers = {item["answer"] for item in items}
    assert len(answers) >= 3  # answer positions are spread, not always A


def test_text_set_loads():
    paragraphs = load_text_set(DATA / "text_demo.txt")
    assert len(paragraphs) >= 25
    assert all(len(p.split()) >= 20 for p in paragraphs)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        ('{"question": "q", "choices": ["a", "b"]}', r"bad\.jsonl:2: missing field 'answer'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}', r"bad\.jsonl:2: field 'answer'"),
        ('{"question": "q", "choices": ["a", "b"], "answer": true}', r"bad\.jsonl:2: field 'answer'"),
        ('{"question": "", "choices": ["a", "b"], "answer": 0}', r"bad\.jsonl:2: field 'question'"),
        ('{"question": "q", "choices": ["a"], "answer": 0}', r"bad\.jsonl:2: field 'choices'"),
        ('{"question": "q", "choices": ["a", 3], "answer": 0}', r"bad\.jsonl:2: field 'choices\[1\]'"),
        ('{"question": "q", "choices": ["a", "a"], "answer": 0}', r"bad\.jsonl:2: field 'choices' has duplicates"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 0, "answr": 1}', r"bad\.jsonl:2: unknown field"),
        ('["q"]', r"bad\.jsonl:2: expected a JSON object"),
    ],
)
def test_loader_rejects_bad_lines(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(CapabilityDataError, match=message):
        load_capability_set(path)


def test_loader_rejects_missing_and_empty(tmp_path):
    with pytest.raises(CapabilityDataError, match="no such file"):
        load_capability_set(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(CapabilityDataError, match="no questions"):
        load_capability_set(tmp_path / "empty.jsonl")


@pytest.mark.parametrize("family", ["gemma2", "qwen3_5", "gpt_oss"])
def test_left_padding_is_exact_across_attention_kinds(family):
    """Sliding-window/soft-capped, linear-attention and sink-attention families: batched == alone."""
    model, tok = tiny_model(family)
    got = last_position_logits(model, tok, TEXTS[:4], chat=False, batch_size=4)
    expected = torch.stack([_single_logits(model, tok(t)["input_ids"])[-1] for t in TEXTS[:4]])
    assert torch.allclose(got, expected, atol=1e-5)


def test_questions_from_dataset_frame():
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": ["m1", "m2"],
            "prompt": ["What is 2+2?", "Capital of Peru?"],
            "category": ["elementary_mathematics", "high_school_geography"],
            "label": np.array([1, 0], dtype=np.int64),
            "choices": [np.array(["3", "4", "5", "6"]), ["Lima", "Cusco", "Quito", "Bogota"]],
        }
    )
    items = questions_from_frame(frame, with_subject=True, source="mmlu")
    assert items[0] == {"question": "What is 2+2?", "choices": ["3", "4", "5", "6"], "answer": 1,
                        "subject": "elementary_mathematics"}
    assert type(items[0]["answer"]) is int
    assert "subject" not in questions_from_frame(frame, with_subject=False)[1]
    with pytest.raises(CapabilityDataError, match=r"arc row 1 \(id m2\): field 'answer'"):
        questions_from_frame(frame.assign(label=[1, 9]), with_subject=False, source="arc")
    with pytest.raises(CapabilityDataError, match=r"missing column\(s\) \['choices'\]"):
        questions_from_frame(frame.drop(columns=["choices"]), with_subject=False)


# --- shots from a separate split ----------------------------------------------------------------


def _item(q: str, subject: str | None = None) -> dict:
    return {"question": q, "choices": ["x", "y"], "answer": 0} | ({"subject": subject} if subject else {})


def test_mmlu_shots_are_the_first_n_of_the_same_subject():
    """lm-evaluation-harness's MMLU: shots from the dev split, same subject, first n in file order."""
    from harness.measures.capability import few_shot_sets

    pool = [_item(f"{s}{i}", s) for i in range(3) for s in ("a", "b")]
    questions = [_item("qa", "a"), _item("qb", "b"), _item("qa2", "a")]
    shots = few_shot_sets(questions, pool, 2, same_subject=True)
    assert [[s["question"] for s in row] for row in shots] == [["a0", "a1"], ["b0", "b1"], ["a0", "a1"]]
    with pytest.raises(CapabilityDataError, match="3 items of subject 'a', 4 needed"):
        few_shot_sets(questions, pool, 4, same_subject=True)
    with pytest.raises(CapabilityDataError, match="0 items of subject 'c'"):
        few_shot_sets([_item("qc", "c")], pool, 1, same_subject=True)


def test_arc_shots_are_seeded_draws_from_the_pool():
    from harness.measures.capability import few_shot_sets

    pool = [_item(f"t{i}") for i in range(20)]
    questions = [_item(f"q{i}") for i in range(6)]
    a = few_shot_sets(questions, pool, 5, same_subject=False, seed=3)
    assert a == few_shot_sets(questions, pool, 5, same_subject=False, seed=3)
    assert a != few_shot_sets(questions, pool, 5, same_subject=False, seed=4)
    assert all(len({s["question"] for s in row}) == 5 and all(s in pool for s in row) for row in a)
    assert len({tuple(s["question"] for s in row) for row in a}) > 1  # drawn per question
    with pytest.raises(CapabilityDataError, match="20 items, 21 needed"):
        few_shot_sets(questions, pool, 21, same_subject=False, seed=3)


def test_accuracy_with_per_question_shots_equals_one_by_one(model, tokenizer):
    """`shot_sets` gives each question its own shots: the same scores as each prompt alone with those shots."""
    shot_sets = [[QUESTIONS[(i + 1) % len(QUESTIONS)], QUESTIONS[(i + 3) % len(QUESTIONS)]] for i in range(len(QUESTIONS))]
    result = multiple_choice_accuracy(model, tokenizer, QUESTIONS, n_shot=2, shot_sets=shot_sets, batch_size=3,
                                      progress=False)
    _, letters = answer_tokens(tokenizer, 5)
    for i, q in enumerate(QUESTIONS):
        last = torch.log_softmax(_single_logits(model, tokenizer(mmlu_prompt(q, shot_sets[i]))["input_ids"])[-1], -1)
        assert result["predicted"][i] == int(last[letters[: len(q["choices"])]].argmax())
        assert result["logprobs"][i] == pytest.approx(last[letters[: len(q["choices"])]].tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="not both"):
        multiple_choice_accuracy(model, tokenizer, QUESTIONS, n_shot=2, shots=QUESTIONS[:2], shot_sets=shot_sets)
    with pytest.raises(ValueError, match="shot_sets\\[0\\] has only 2 shots"):
        multiple_choice_accuracy(model, tokenizer, QUESTIONS, n_shot=3, shot_sets=shot_sets, progress=False)


@pytest.mark.parametrize("name", ["mmlu_demo", "arc_demo"])
def test_demo_sets_have_their_shot_splits(name):
    """The demo's stand-in sets have their own shot files (data/capability/README.md): every MMLU stand-in subject
    has 5 dev items, the ARC stand-in a train pool of 20; none of them repeats a test question."""
    from harness.config import DatasetRef
    from harness.data.loading import load_dataset, shots_ref
    from harness.measures.capability import few_shot_sets

    mmlu = name == "mmlu_demo"
    test = questions_from_frame(load_dataset(name), with_subject=mmlu)
    pool = questions_from_frame(load_dataset(shots_ref(DatasetRef(name=name))),
                                with_subject=mmlu)
    assert not {q["question"] for q in test} & {q["question"] for q in pool}
    shots = few_shot_sets(test, pool, 5, same_subject=mmlu, seed=0)
    assert len(shots) == len(test) and all(len(s) == 5 for s in shots)


# --- shared-prefix scoring (issue 23) -----------------------------------------------------------

SUBJECT_QUESTIONS = [dict(q, subject=s) for s, qs in (("geography", QUESTIONS[:4]), ("astronomy", QUESTIONS[4:]))
                     for q in qs]


def _subject_shots(questions: list[dict], n_shot: int) -> list[list[dict]]:
    """Shots shared by every question of a subject (as MMLU's dev split gives them), never the question itself."""
    pool = [dict(q, question=f"Earlier: {q['question']}") for q in QUESTIONS]
    return [[dict(p, subject=q["subject"]) for p in pool[:n_shot]] if q["subject"] == "geography" else
            [dict(p, subject=q["subject"]) for p in pool[-n_shot:]] for q in questions]


def _shared_and_plain(model, tokenizer, questions, monkeypatch, batch_size=3):
    import harness.measures.capability as capability

    calls = []
    real = capability.suffix_logits
    monkeypatch.setattr(capability, "suffix_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    shot_sets = _subject_shots(questions, 3)
    shot_sets = [next(s for s in shot_sets if s[0]["subject"] == q["subject"]) for q in questions]  # one list per subject
    shared = multiple_choice_accuracy(model, tokenizer, questions, n_shot=3, shot_sets=shot_sets,
                                      batch_size=batch_size, progress=False)
    used = len(calls)
    plain = multiple_choice_accuracy(model, tokenizer, questions, n_shot=3, shot_sets=shot_sets,
                                     batch_size=batch_size, progress=False, shared_prefix=False)
    assert len(calls) == used  # the plain path never extends a cache
    return shared, plain, used


def test_shared_prefix_equals_the_plain_path(model, tokenizer, monkeypatch):
    """Questions of one subject share their shots: the prefix is computed once and extended per question, and the
    letters' log-probabilities equal one forward pass of each whole prompt."""
    shared, plain, used = _shared_and_plain(model, tokenizer, SUBJECT_QUESTIONS, monkeypatch)
    assert used > 0
    assert shared["predicted"] == plain["predicted"] and shared["accuracy"] == plain["accuracy"]
    for a, b in zip(shared["logprobs"], plain["logprobs"]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma", "gemma2", "gemma3", "gemma4", "qwen2", "qwen3",
                                    "qwen3_5", "gpt_oss"])
def test_shared_prefix_equals_the_plain_path_in_every_family(family, monkeypatch):
    """Every tiny family: equal to the plain path; families whose cache is KV take the shared path, sliding windows
    shorter than the prompt included (tiny mistral, gemma2/3/4, gpt_oss); linear attention falls back to the plain
    one."""
    from harness.measures import capability

    passes = []
    real_prefix = capability.prefix_cache
    monkeypatch.setattr(capability, "prefix_cache", lambda *a, **k: passes.append(1) or real_prefix(*a, **k))
    model, tok = tiny_model(family)
    shared, plain, used = _shared_and_plain(model, tok, SUBJECT_QUESTIONS, monkeypatch)
    assert shared["predicted"] == plain["predicted"]
    for a, b in zip(shared["logprobs"], plain["logprobs"]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0), family
    if family in ("mistral", "gemma2", "gemma3", "gemma4", "gpt_oss"):  # the shared path crosses a sliding window
        from harness.measures.capability import mmlu_prompt

        shots = _subject_shots(SUBJECT_QUESTIONS, 3)
        shortest = min(len(tok(mmlu_prompt(q, s)).input_ids) for q, s in zip(SUBJECT_QUESTIONS, shots))
        assert model.config.sliding_window < shortest, (family, model.config.sliding_window, shortest)
    if family != "qwen3_5":
        assert used > 0, f"{family}: the shared-prefix path was not taken"
    else:  # the first subject's prefix pass shows the recurrent cache; the second subject skips its prefix pass
        assert used == 0 and len(passes) == 1, family


def test_shared_prefix_equals_the_plain_path_on_the_demo_model(monkeypatch):
    """The demo model (SmolLM2-135M, the pinned GGUF) on the MMLU stand-in with its dev shots: the same accuracy
    and answers, log-probabilities within float tolerance."""
    from harness.config import DatasetRef, load_experiment
    from harness.data.loading import load_dataset, shots_ref
    from harness.measures.capability import few_shot_sets
    from harness.models.loading import load_model

    try:
        model, tok = load_model(load_experiment("demo").model, device="cpu")
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"demo model unavailable: {err}")
    questions = questions_from_frame(load_dataset("mmlu_demo"), with_subject=True)
    pool = questions_from_frame(load_dataset(shots_ref(DatasetRef(name="mmlu_demo"))), with_subject=True)
    shot_sets = few_shot_sets(questions, pool, 5, same_subject=True)
    shared = multiple_choice_accuracy(model, tok, questions, n_shot=5, shot_sets=shot_sets, batch_size=8,
                                      progress=False)
    plain = multiple_choice_accuracy(model, tok, questions, n_shot=5, shot_sets=shot_sets, batch_size=8,
                                     progress=False, shared_prefix=False)
    assert shared["accuracy"] == plain["accuracy"] and shared["predicted"] == plain["predicted"]
    gap = max(float((torch.tensor(a) - torch.tensor(b)).abs().max()) for a, b in zip(shared["logprobs"], plain["logprobs"]))
    assert gap < 1e-4, gap


# --- ARC as lm-evaluation-harness scores it -----------------------------------------------------


def test_arc_context_is_lm_eval_format():
    from harness.measures.capability import arc_context

    shot = {"question": "1+1?", "choices": ["2", "3"], "answer": 0}
    item = {"question": "Sky colour?", "choices": ["blue", "green"], "answer": 0}
    assert arc_context(item, [shot]) == "Question: 1+1?\nAnswer: 2\n\nQuestion: Sky colour?\nAnswer:"
    assert arc_context(item) == "Question: Sky colour?\nAnswer:"


def test_cloze_accuracy_equals_one_by_one_sums(model, tokenizer):
    """Each choice's summed log-probability after "Answer:", from one unpadded pass per (question, choice)."""
    from harness.measures.capability import arc_context, cloze_accuracy

    shot_sets = [[QUESTIONS[(i + 1) % len(QUESTIONS)], QUESTIONS[(i + 2) % len(QUESTIONS)]] for i in range(len(QUESTIONS))]
    result = cloze_accuracy(model, tokenizer, QUESTIONS, shot_sets=shot_sets, n_shot=2, batch_size=4, progress=False)
    for i, q in enumerate(QUESTIONS):
        context = arc_context(q, shot_sets[i])
        ctx = tokenizer(context)["input_ids"]
        for j, choice in enumerate(q["choices"]):
            whole = tokenizer(context + " " + choice)["input_ids"]
            assert whole[: len(ctx)] == ctx
            logp = torch.log_softmax(_single_logits(model, whole), -1)
            expected = sum(float(logp[k - 1, whole[k]]) for k in range(len(ctx), len(whole)))
            assert abs(result["logprobs"][i][j] - expected) < 1e-4
        assert result["predicted"][i] == max(range(len(q["choices"])), key=lambda j: result["logprobs"][i][j])
    assert result["n"] == len(QUESTIONS) and 0 <= result["accuracy_norm"] <= 1


@pytest.mark.parametrize("family", ["llama", "gemma", "qwen3", "qwen3_5", "gpt_oss"])
def test_cloze_shared_context_equals_the_plain_path(family, monkeypatch):
    """A question's choices share one pass over its context: the same answers as one pass per (question, choice),
    log-probabilities within float tolerance (a family whose cache cannot be extended takes the plain path)."""
    import harness.measures.capability as capability
    from harness.measures.capability import cloze_accuracy

    calls = []
    real = capability.suffix_logits
    monkeypatch.setattr(capability, "suffix_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tok = tiny_model(family)
    shot_sets = [[QUESTIONS[(i + 1) % len(QUESTIONS)], QUESTIONS[(i + 2) % len(QUESTIONS)]] for i in range(len(QUESTIONS))]
    shared = cloze_accuracy(model, tok, QUESTIONS, shot_sets=shot_sets, n_shot=2, batch_size=3, progress=False)
    plain = cloze_accuracy(model, tok, QUESTIONS, shot_sets=shot_sets, n_shot=2, batch_size=3, progress=False,
                           shared_prefix=False)
    assert shared["predicted"] == plain["predicted"] and shared["accuracy_norm"] == plain["accuracy_norm"]
    for a, b in zip(shared["logprobs"], plain["logprobs"]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0), family
    if family != "qwen3_5":  # gpt_oss: its window is shorter than every prompt
        assert calls, f"{family}: the shared-context path was not taken"
    else:  # linear attention: one prefix pass shows it, the rest go the plain way
        passes = []
        real_prefix = capability.prefix_cache
        monkeypatch.setattr(capability, "prefix_cache", lambda *a, **k: passes.append(1) or real_prefix(*a, **k))
        cloze_accuracy(model, tok, QUESTIONS, shot_sets=shot_sets, n_shot=2, batch_size=1, progress=False)
        assert len(passes) == 1 and not calls


def test_encode_texts_tokenizes_a_set_once_per_tokenizer(tokenizer):
    """A capability set is scored once per condition: its tokens come from one tokenizer call, remembered by the
    texts' digest (other texts or arguments are encoded anew, and the memo keeps ENCODED_KEEP lists)."""
    from harness.measures.capability import ENCODED_KEEP, encode_texts

    calls = []

    class Counting:
        def __call__(self, texts, **kwargs):
            calls.append(list(texts))
            return tokenizer(texts, **kwargs)

    counting = Counting()
    texts = ["The first text.", "A second one."]
    first = encode_texts(counting, texts)
    assert first == tokenizer(texts)["input_ids"] and len(calls) == 1
    assert encode_texts(counting, list(texts)) is first and len(calls) == 1
    assert encode_texts(counting, texts[::-1]) == first[::-1] and len(calls) == 2
    assert encode_texts(counting, texts, truncation=True, max_length=2) == [ids[:2] for ids in first]
    assert len(calls) == 3
    for k in range(ENCODED_KEEP):
        encode_texts(counting, [f"text {k}"])
    encode_texts(counting, texts)
    assert len(calls) == 3 + ENCODED_KEEP + 1  # the oldest lists were let go
    assert encode_texts(counting, texts) is not first
