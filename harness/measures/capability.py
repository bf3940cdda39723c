"""Capability of a (possibly edited) model: MMLU/ARC accuracy by log-likelihood (letter or cloze scoring, few-shot from
the dev/train split), cross-entropy on plain text.
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.data.capability_sets import LETTERS, CapabilityDataError, validate_question
from harness.models.logits import forward_kwargs, forward_logits, index_batches, left_pad, pad_token_id, target_logprobs
from harness.models.prefix import common_prefix_len, prefix_cache, suffix_logits

ENCODED_KEEP = 4  # token lists remembered per tokenizer: a run's MMLU prompts, ARC contexts and answers, CE texts
_encoded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {digest of texts: input_ids}


def encode_texts(tokenizer, texts: Sequence[str], **kwargs) -> list[list[int]]:
    """`tokenizer(texts, **kwargs)["input_ids"]` in one call (a fast tokenizer encodes the batch in Rust), remembered
    per tokenizer by the SHA-256 of the texts and arguments: a capability set is scored once per condition, and its
    tokens do not change between conditions. The lists are shared: callers must not modify them."""
    h = hashlib.sha256(repr(sorted(kwargs.items())).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    memo = _encoded.setdefault(tokenizer, {})
    key = h.digest()
    if key not in memo:
        if len(memo) >= ENCODED_KEEP:
            memo.pop(next(iter(memo)))
        memo[key] = tokenizer(list(texts), **kwargs)["input_ids"]
    return memo[key]


class AnswerTokenError(ValueError):
    """The tokenizer has no single token for an answer letter after "Answer:"."""


def answer_tokens(tokenizer, n_choices: int) -> tuple[list[int], list[int]]:
    """How the tokenizer continues "Answer:" with " A", " B", ...: (shared ids, one letter id per choice).

    Found by difference ("Answer: A" minus "Answer:") because SentencePiece and byte-level BPE spell
    the leading space differently. Usually the shared part is empty (" A" is one token); a tokenizer
    without such merges gives a shared space token, which is the same for every letter, so appending it
    to the prompt leaves the argmax over letters unchanged. Raises `AnswerTokenError` otherwise.
    """
    if not 1 <= n_choices <= len(LETTERS):
        raise ValueError(f"n_choices must be in [1, {len(LETTERS)}], got {n_choices}")
    name = type(tokenizer).__name__
    prefix = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    continuations = []
    for letter in LETTERS[:n_choices]:
        full = tokenizer(f"Answer: {letter}", add_special_tokens=False)["input_ids"]
        if len(full) <= len(prefix) or full[: len(prefix)] != prefix:
            raise AnswerTokenError(f"tokenizer {name}: 'Answer: {letter}' does not extend 'Answer:' ({prefix} vs {full})")
        continuations.append(full[len(prefix) :])
    shared = continuations[0][:-1]
    if any(c[:-1] != shared for c in continuations):
        raise AnswerTokenError(f"tokenizer {name}: answer letters do not differ only in their last token: {continuations}")
    ids = [c[-1] for c in continuations]
    if len(set(ids)) != len(ids):
        raise AnswerTokenError(f"tokenizer {name}: answer letters share token ids {ids}")
    return shared, ids


def _subject_header(subject: str | None) -> str:
    if not subject:
        return ""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _format_item(item: dict, *, with_answer: bool) -> str:
    lines = [item["question"].strip()]
    lines += [f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(item["choices"])]
    lines.append(f"Answer: {LETTERS[item['answer']]}\n\n" if with_answer else "Answer:")
    return "\n".join(lines)


def mmlu_prompt(item: dict, shots: Sequence[dict] = ()) -> str:
    """The MMLU few-shot prompt: optional subject header, solved shots, then the question ending in "Answer:"."""
    body = "".join(_format_item(shot, with_answer=True) for shot in shots)
    return _subject_header(item.get("subject")) + body + _format_item(item, with_answer=False)


def _shots_for(index: int, questions: Sequence[dict], shots: Sequence[dict] | None, n_shot: int) -> list[dict]:
    if shots is not None:
        return list(shots[:n_shot])
    pool = [q for j, q in enumerate(questions) if j != index]
    return pool[:n_shot]


def few_shot_sets(questions: Sequence[dict], pool: Sequence[dict], n_shot: int, *, same_subject: bool,
                  seed: int | None = None) -> list[list[dict]]:
    """Each question's shots from a separate split, as lm-evaluation-harness draws them.

    `same_subject` (MMLU): the first `n_shot` items of the question's own subject in `pool` (its dev split; lm-eval's
    `first_n` sampler), so every question of a subject shares one prompt prefix. Otherwise (ARC): `n_shot` items
    drawn from the whole `pool` (its train split) by a generator seeded with `seed`, one draw per question in order
    (lm-eval's default sampler draws at random). Raises `CapabilityDataError` naming the subject that has too few.
    """
    if n_shot < 0:
        raise ValueError(f"n_shot must be >= 0, got {n_shot}")
    if same_subject:
        by_subject: dict[str | None, list[dict]] = {}
        for item in pool:
            by_subject.setdefault(item.get("subject"), []).append(item)
        out = []
        for q in questions:
            found = by_subject.get(q.get("subject"), [])
            if len(found) < n_shot:
                raise CapabilityDataError(f"shot pool has {len(found)} items of subject {q.get('subject')!r}, "
                                          f"{n_shot} needed for {n_shot}-shot")
            out.append(found[:n_shot])
        return out
    if len(pool) < n_shot:
        raise CapabilityDataError(f"shot pool has {len(pool)} items, {n_shot} needed for {n_shot}-shot")
    if seed is None:
        raise ValueError("few_shot_sets: drawing shots at random needs a seed")
    rng = np.random.default_rng(seed)
    return [[pool[int(j)] for j in rng.choice(len(pool), size=n_shot, replace=False)] for _ in questions]


@torch.inference_mode()
def multiple_choice_accuracy(
    model,
    tokenizer,
    questions: list[dict],
    *,
    n_shot: int = 5,
    shots: list[dict] | None = None,
    shot_sets: list[list[dict]] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    shared_prefix: bool = True,
) -> dict:
    """k-shot accuracy by argmax of the next-token log-likelihood of the answer letters (no generation).

    Shots come from `shot_sets` (one list per question, `few_shot_sets` from the dev/train split) or `shots` (the
    same for every question); without either, question i uses the first `n_shot` other questions of the list, so
    no question sees its own answer and n stays len(questions).
    With `shared_prefix`, questions with the same shots (an MMLU subject) share one forward pass of their common
    token prefix (the KV cache is computed once and extended per question), so a 5-shot set costs about its unique
    tokens; the scores equal the plain path's to float tolerance (evals/test_capability.py). Models whose cache is
    not per-token KV (linear attention) take the plain path.
    Returns {"accuracy", "n", "correct": [bool] (for paired tests), "predicted": [int], "logprobs": [[float]] (the
    answer letters' log-probabilities)}.
    """
    if not questions:
        raise ValueError("multiple_choice_accuracy needs at least one question")
    if n_shot < 0:
        raise ValueError(f"n_shot must be >= 0, got {n_shot}")
    if shots is not None and shot_sets is not None:
        raise ValueError("give shots (one list for all questions) or shot_sets (one per question), not both")
    if shot_sets is not None:
        if len(shot_sets) != len(questions):
            raise ValueError(f"shot_sets has {len(shot_sets)} lists for {len(questions)} questions")
        short = [i for i, s in enumerate(shot_sets) if len(s) < n_shot]
        if short:
            raise ValueError(f"n_shot={n_shot} but shot_sets[{short[0]}] has only {len(shot_sets[short[0]])} shots")
    else:
        pool_size = len(shots) if shots is not None else len(questions) - 1
        if pool_size < n_shot:
            source = "shots" if shots is not None else "questions (other than the one asked)"
            raise ValueError(f"n_shot={n_shot} but only {pool_size} {source} available")
    for i, q in enumerate(questions):
        validate_question(q, f"questions[{i}]")
    for i, q in enumerate(shots or []):
        validate_question(q, f"shots[{i}]")
    for i, shot_list in enumerate(shot_sets or []):
        for j, q in enumerate(shot_list[:n_shot]):
            validate_question(q, f"shot_sets[{i}][{j}]")

    def shots_of(i: int) -> list[dict]:
        return list(shot_sets[i][:n_shot]) if shot_sets is not None else _shots_for(i, questions, shots, n_shot)

    shared, letters = answer_tokens(tokenizer, max(len(q["choices"]) for q in questions))
    letter_ids = torch.tensor(letters)
    prompts = [mmlu_prompt(q, shots_of(i)) for i, q in enumerate(questions)]
    encoded = [ids + shared for ids in encode_texts(tokenizer, prompts)]
    pad_id = pad_token_id(tokenizer)
    groups = _prefix_groups(encoded, [tuple(map(id, shots_of(i))) for i in range(len(questions))]) \
        if shared_prefix else [(0, list(range(len(questions))))]
    picked: dict[int, torch.Tensor] = {}  # question -> the answer letters' log-probabilities [letters]

    def score(rows: list[int], logits: torch.Tensor) -> None:
        """`logits: [batch, vocab]` where the model left them; the softmax runs there, so only [batch, letters]
        comes to the CPU."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)[:, letter_ids.to(logits.device)].cpu()
        picked.update(zip(rows, logprobs))
        bar.update(len(rows))

    def plain(members: list[int]) -> None:
        order = sorted(members, key=lambda i: -len(encoded[i]))
        for batch in index_batches(len(order), batch_size):
            rows = [order[k] for k in batch]
            ids, mask = left_pad([encoded[i] for i in rows], pad_id)
            score(rows, forward_logits(model, ids, mask, last_only=True, on_cpu=False))

    with tqdm(total=len(questions), desc="multiple choice", disable=not progress) as bar:
        plain([i for prefix_len, members in groups if not prefix_len for i in members])
        # `batch_size` subjects' prefixes go through one forward (left-padded), then their questions `batch_size` at a
        # time, each row extending its own subject's cached prefix: a 1000-question MMLU of 57 subjects takes 2
        # prefix passes and ~32 question passes, not one prefix pass and a part-filled question pass per subject.
        shared = sorted(((n, m) for n, m in groups if n), key=lambda g: -g[0])
        extendable = True  # until a prefix pass shows this model's cache cannot be extended
        for chunk in index_batches(len(shared), batch_size):
            chosen = [shared[k] for k in chunk]
            cached = prefix_cache(model, [encoded[m[0]][:n] for n, m in chosen], pad_id) if extendable else None
            extendable = cached is not None
            if cached is None:
                plain([i for _, m in chosen for i in m])
                continue
            cache, prefix_mask, prefix_lens = cached
            members = sorted(((slot, i) for slot, (n, m) in enumerate(chosen) for i in m),
                             key=lambda si: -(len(encoded[si[1]]) - chosen[si[0]][0]))  # longest suffix first
            for batch in index_batches(len(members), batch_size):
                rows = [members[k] for k in batch]
                suffixes = [encoded[i][chosen[slot][0]:] for slot, i in rows]
                logits = suffix_logits(model, copy.deepcopy(cache), prefix_mask, prefix_lens, [slot for slot, _ in rows],
                                       suffixes, pad_id, keep=1)[:, -1]  # [batch, vocab]
                score([i for _, i in rows], logits)
    scored = [picked[i][: len(q["choices"])] for i, q in enumerate(questions)]
    predicted = [int(lp.argmax()) for lp in scored]
    correct = [p == q["answer"] for p, q in zip(predicted, questions)]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct), "correct": correct, "predicted": predicted,
            "logprobs": [lp.tolist() for lp in scored]}


# --- shared-prefix scoring ----------------------------------------------------------------------


def _prefix_groups(encoded: Sequence[Sequence[int]], keys: Sequence[tuple]) -> list[tuple[int, list[int]]]:
    """Questions with the same shots, as (shared token count, question indices). The shared part is the longest
    common prefix of the group's own token ids (the plain path's tokens, never a separately tokenized prefix), less
    the last token of the shortest prompt, which must be fed to get its next-token logits. A lone question shares
    nothing."""
    members: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    out = []
    for group in members.values():
        seqs = [encoded[i] for i in group]
        shared = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1) if len(group) > 1 else 0
        out.append((max(shared, 0), group))
    return out


# --- ARC: answer-text (cloze) scoring -----------------------------------------------------------


def arc_context(item: dict, shots: Sequence[dict] = ()) -> str:
    """lm-evaluation-harness's ARC prompt: solved shots "Question: ...\nAnswer: <answer text>" joined by a blank
    line, then the question ending in "Answer:"; each choice's text (after a space) is the scored continuation."""
    solved = [f"Question: {s['question']}\nAnswer: {s['choices'][s['answer']]}" for s in shots]
    return "\n\n".join([*solved, f"Question: {item['question']}\nAnswer:"])


@torch.inference_mode()
def cloze_accuracy(model, tokenizer, questions: list[dict], *, shot_sets: list[list[dict]], n_shot: int = 5,
                   batch_size: int = 16, progress: bool = True, shared_prefix: bool = True) -> dict:
    """k-shot accuracy by the log-likelihood of each choice's text after "Answer:", as lm-evaluation-harness scores
    ARC: `acc` takes the choice with the largest summed log-probability, `acc_norm` divides it by the choice's length
    in bytes. The continuation's tokens are the whole string's tokens after the context's (lm-eval's split). With
    `shared_prefix` a question's choices share one pass over its context, and `batch_size` contexts (left-padded) go
    through one forward, so scoring the 3-5 answer texts of a batch of questions costs about one pass over their
    contexts, not one per choice or per question.
    Returns {"accuracy" (acc), "accuracy_norm", "n", "correct", "correct_norm", "predicted", "logprobs"}."""
    if not questions:
        raise ValueError("cloze_accuracy needs at least one question")
    if len(shot_sets) != len(questions) or any(len(s) < n_shot for s in shot_sets):
        raise ValueError(f"cloze_accuracy needs one list of at least {n_shot} shots per question")
    for i, q in enumerate(questions):
        validate_question(q, f"questions[{i}]")
    requests = []  # (question, choice, context ids, continuation ids)
    contexts = [arc_context(q, shot_sets[i][:n_shot]) for i, q in enumerate(questions)]
    context_ids = encode_texts(tokenizer, contexts)
    whole_ids = iter(encode_texts(tokenizer, [c + " " + choice for c, q in zip(contexts, questions)
                                              for choice in q["choices"]]))
    for i, q in enumerate(questions):
        ctx = context_ids[i]
        for j, choice in enumerate(q["choices"]):
            whole = next(whole_ids)
            cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else tokenizer(" " + choice, add_special_tokens=False)[
                "input_ids"]
            requests.append((i, j, whole[: len(whole) - len(cont)], cont))
    pad_id = pad_token_id(tokenizer)
    score = {}

    def add(rows, logits, keep: int) -> None:
        """`logits: [batch, keep + 1, vocab]` (the last keep + 1 positions, where the model left them): each row's
        continuation log-probabilities are picked there, a few rows at a time, and only those come to the CPU."""
        targets = torch.zeros(len(rows), keep, dtype=torch.long)  # [batch, keep]; left-padded like the rows
        for row, (*_, cont) in enumerate(rows):
            targets[row, keep - len(cont):] = torch.tensor(cont)
        picked = target_logprobs(logits[:, :-1], targets)  # [batch, keep]
        for row, (i, j, _, cont) in enumerate(rows):
            score[i, j] = float(picked[row, keep - len(cont):].sum())

    def plain(rows) -> None:
        for batch in index_batches(len(rows), batch_size):
            chunk = [rows[k] for k in batch]
            keep = max(len(cont) for *_, cont in chunk)
            ids, mask = left_pad([ctx + cont for *_, ctx, cont in chunk], pad_id)  # [batch, seq]
            add(chunk, model(**forward_kwargs(model, ids, mask), use_cache=False, logits_to_keep=keep + 1).logits, keep)
            bar.update(len(chunk))

    by_question: dict[int, list[tuple]] = {}
    for request in requests:
        by_question.setdefault(request[0], []).append(request)
    with tqdm(total=len(requests), desc="multiple choice (cloze)", disable=not progress) as bar:
        if not shared_prefix:
            plain(requests)
        else:
            # All but the last context token of each question is computed once, `batch_size` contexts per forward;
            # every choice of those questions is then scored in one pass over their caches.
            shared = {i: min(common_prefix_len([ctx + cont for *_, ctx, cont in rows]),
                             min(len(ctx) for _, _, ctx, _ in rows) - 1)
                      for i, rows in by_question.items()}
            order = sorted((i for i in by_question if shared[i] > 0), key=lambda i: -shared[i])
            extendable = True  # until a prefix pass shows this model's cache cannot be extended
            plain([r for i in by_question if shared[i] <= 0 for r in by_question[i]])
            for batch in index_batches(len(order), batch_size):
                chosen = [order[k] for k in batch]
                rows = [r for i in chosen for r in by_question[i]]
                prefixes = [by_question[i][0][2][: shared[i]] for i in chosen]
                suffixes = [(ctx + cont)[shared[i]:] for i, _, ctx, cont in rows]
                cached = prefix_cache(model, prefixes, pad_id) if extendable else None
                extendable = cached is not None
                if cached is None:
                    plain(rows)
                    continue
                keep = max(len(cont) for *_, cont in rows)
                slot = {i: k for k, i in enumerate(chosen)}
                add(rows, suffix_logits(model, *cached, [slot[r[0]] for r in rows], suffixes, pad_id, keep=keep + 1),
                    keep)
                bar.update(len(rows))
    logprobs = [[score[i, j] for j in range(len(q["choices"]))] for i, q in enumerate(questions)]
    predicted = [int(torch.tensor(lp).argmax()) for lp in logprobs]
    normed = [int(torch.tensor([v / len((" " + c).encode()) for v, c in zip(lp, q["choices"])]).argmax())
              for lp, q in zip(logprobs, questions)]
    correct = [p == q["answer"] for p, q in zip(predicted, questions)]
    correct_norm = [p == q["answer"] for p, q in zip(normed, questions)]
    return {"accuracy": sum(correct) / len(correct), "accuracy_norm": sum(correct_norm) / len(correct_norm),
            "n": len(correct), "correct": correct, "correct_norm": correct_norm, "predicted": predicted,
            "logprobs": logprobs}


# --- cross-entropy ----------------------------------------------------------------------------


@torch.inference_mode()
def cross_entropy(model, tokenizer, texts: list[str], *, max_length: int = 256, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) over all predicted tokens of `texts`, each cut to `max_length` tokens.

    Token-weighted, so long texts count for more, as in a language-modelling loss.
    """
    if not texts:
        raise ValueError("cross_entropy needs at least one text")
    encoded = encode_texts(tokenizer, texts, truncation=True, max_length=max_length)
    pad_id = pad_token_id(tokenizer)
    total, count = 0.0, 0
    for batch in index_batches(len(encoded), batch_size):
        ids, mask = left_pad([encoded[i] for i in batch], pad_id)  # [batch, seq]
        # The loss is taken where the logits are: [batch, seq, vocab] never leaves the device.
        logits = model(**forward_kwargs(model, ids, mask), use_cache=False).logits  # [batch, seq, vocab]
        scored = (mask[:, :-1] & mask[:, 1:]).bool()  # a target and its context are both real tokens
        targets = ids[:, 1:].masked_fill(~scored, -100).to(logits.device)
        total += F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
            reduction="sum",
        ).item()
        count += int(scored.sum())
    if count == 0:
        raise ValueError("cross_entropy: no text has two or more tokens")
    return total / count
