"""The CPU demo model: SmolLM2-135M-Instruct fine-tuned to refuse, built once and cached.

The base model rarely refuses, so there is no refusal direction to find in it. A short supervised
fine-tune gives it one: unsafe requests from the fit policy areas map to a fixed refusal sentence,
safe requests from the same areas map to the model's own greedy answer (self-distillation, so
helpfulness is anchored rather than unlearned). Only the held-out areas are used for evaluation,
so refusal there is generalisation, not memorisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock

from harness.config import ModelConfig, RefusalTune
from harness.run.cache import cache_root, cached_json, code_fingerprint, stage_key

STAGE = "demo_model"
DISTILL_STAGE = "demo_distill"
DONE_FILE = "build.json"
IGNORE = -100


class DemoModelError(ValueError):
    """A demo-model build that cannot run; the message names the field at fault."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]  # prompt tokens then answer tokens
    n_prompt: int  # loss is taken only on input_ids[n_prompt:]


def dataset_sha256(fit_prompts: pd.DataFrame) -> str:
    """Hash of the rows (in order) that the fine-tune sees."""
    blob = fit_prompts[["prompt", "label", "category"]].to_csv(index=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def demo_key(model_cfg: ModelConfig, fit_prompts: pd.DataFrame) -> str:
    tune = refusal_tune_of(model_cfg)
    return stage_key(
        model=model_cfg.id,
        weights=model_cfg.sha256 or model_cfg.revision or model_cfg.path,
        dtype=model_cfg.dtype,
        device=model_cfg.device,
        dataset=dataset_sha256(fit_prompts),
        recipe=tune.model_dump(mode="json"),
        code=code_fingerprint("tools.demo_model", "models.chat"),
    )


def load_refusing_model(model_cfg: ModelConfig, fit_prompts: pd.DataFrame, *, device: str | None = None,
                        progress: bool = True):
    """(model, tokenizer) of the refusal-tuned model (`build_refusing_model`), loaded as the local checkpoint it is."""
    from harness.models.loading import load_model

    path = build_refusing_model(model_cfg, fit_prompts, progress=progress)
    local = model_cfg.model_copy(update={"path": str(path), "gguf_file": None, "gguf_package": None, "sha256": None,
                                         "refusal_tune": None})
    return load_model(local, device=device)


def refusal_tune_of(model_cfg: ModelConfig) -> RefusalTune:
    if model_cfg.refusal_tune is None:
        raise DemoModelError(f"model {model_cfg.id!r}: `model.refusal_tune` is not set")
    return model_cfg.refusal_tune


def build_refusing_model(model_cfg: ModelConfig, fit_prompts: pd.DataFrame, *, progress: bool = True) -> Path:
    """Directory (safetensors, config, tokenizer) of the refusal-tuned model; built at most once per key."""
    tune = refusal_tune_of(model_cfg)
    _check_labels(fit_prompts)
    root = cache_root() / STAGE
    root.mkdir(parents=True, exist_ok=True)
    final = root / demo_key(model_cfg, fit_prompts)
    if (final / DONE_FILE).is_file():
        return final
    with FileLock(str(final) + ".lock"):
        if (final / DONE_FILE).is_file():
            return final
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
        try:
            _build(model_cfg, tune, fit_prompts, tmp, progress)
            if final.exists():  # an incomplete leftover without DONE_FILE
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _check_labels(fit_prompts: pd.DataFrame) -> None:
    counts = fit_prompts["label"].value_counts()
    for label in ("safe", "unsafe"):
        if counts.get(label, 0) == 0:
            raise DemoModelError(f"fit_prompts has no {label!r} rows; the fine-tune needs both labels")


def _build(model_cfg: ModelConfig, tune: RefusalTune, fit_prompts: pd.DataFrame, out: Path, progress: bool) -> None:
    from harness.models.loading import load_model

    start = time.perf_counter()
    base = model_cfg.model_copy(update={"refusal_tune": None})
    model, tokenizer = load_model(base)
    weights = f"{model_cfg.id}:{model_cfg.sha256 or model_cfg.revision or model_cfg.path}:{model_cfg.dtype}"
    examples = training_examples(model, tokenizer, fit_prompts, tune, progress=progress, weights_key=weights)
    losses = fine_tune(model, examples, tune, progress=progress)
    model.eval().requires_grad_(False)
    _drop_gguf_marker(model)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "model": model_cfg.id,
        "weights": model_cfg.sha256 or model_cfg.revision or model_cfg.path,
        "dataset_sha256": dataset_sha256(fit_prompts),
        "recipe": tune.model_dump(mode="json"),
        "n_unsafe": int((fit_prompts["label"] == "unsafe").sum()),
        "n_safe": int((fit_prompts["label"] == "safe").sum()),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    (out / DONE_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))


def _drop_gguf_marker(model) -> None:
    """A GGUF load leaves a quantizer marker that blocks saving, though the weights are already
    dequantized plain tensors; the tuned model is saved as what it is, a float checkpoint."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _turn_end(model, tokenizer) -> int:
    from harness.generation.common import eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    if not eos:
        raise DemoModelError("tokenizer and generation config define no EOS token to end the answer with")
    return eos[0]


def _prompt_ids(tokenizer, instruction: str) -> list[int]:
    from harness.models.chat import tokenize_instructions

    enc = tokenize_instructions(tokenizer, [instruction])
    return enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()


def distill_answers(model, tokenizer, instructions: list[str], max_new_tokens: int, *, progress: bool = True,
                    batch_size: int = 64, cache_key: str | None = None) -> list[list[int]]:
    """The model's own greedy answer tokens; answers that ended early keep their EOS."""
    if cache_key is not None:
        key = stage_key(weights=cache_key, device=model.device.type, instructions=instructions,
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size, code=code_fingerprint("tools.demo_model", "models.chat", "generation"))
        return cached_json(DISTILL_STAGE, key, lambda: distill_answers(
            model, tokenizer, instructions, max_new_tokens, progress=progress, batch_size=batch_size))
    from tqdm.auto import tqdm

    from harness.generation.common import eos_token_ids
    from harness.generation.completions import generate_tokens
    from harness.models.chat import tokenize_instructions

    eos = eos_token_ids(model, tokenizer)
    end = _turn_end(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    batches = [instructions[k : k + batch_size] for k in range(0, len(instructions), batch_size)]
    answers: list[list[int]] = []
    for batch in tqdm(batches, desc="demo: self-distill safe answers", unit="batch", disable=not progress):
        enc = tokenize_instructions(tokenizer, batch).to(model.device)
        new = generate_tokens(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                              eos_token_ids=eos, backend="transformers", pad_token_id=pad)
        answers += [row + [end] if len(row) < max_new_tokens else row for row in new]
    return answers


def training_examples(model, tokenizer, fit_prompts: pd.DataFrame, tune: RefusalTune, *,
                      progress: bool = True, weights_key: str | None = None) -> list[Example]:
    """Unsafe -> the refusal sentence; safe -> the model's own greedy answer. Row order is kept.

    With `weights_key` (what identifies the base weights) the distilled answers are cached, so a
    recipe change that leaves them the same does not regenerate them.
    """
    end = _turn_end(model, tokenizer)
    refusal = tokenizer(tune.refusal_text, add_special_tokens=False)["input_ids"] + [end]
    safe = fit_prompts[fit_prompts["label"] == "safe"]["prompt"].tolist()
    was_training = model.training
    model.eval()
    distilled = dict(zip(safe, distill_answers(model, tokenizer, safe, tune.distill_max_new_tokens, progress=progress,
                                               cache_key=weights_key)))
    model.train(was_training)
    examples = []
    for prompt, label in zip(fit_prompts["prompt"], fit_prompts["label"]):
        ids = _prompt_ids(tokenizer, prompt)
        answer = refusal if label == "unsafe" else distilled[prompt]
        examples.append(Example(ids + answer, len(ids)))
    return examples


def refusal_examples(tokenizer, instructions: list[str], answer_ids: list[int]) -> list[Example]:
    """Each instruction paired with the same answer tokens (no generation needed)."""
    out = []
    for instruction in instructions:
        ids = _prompt_ids(tokenizer, instruction)
        out.append(Example(ids + list(answer_ids), len(ids)))
    return out


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, and `labels` ([batch, seq]) with prompt and pad masked."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, e.n_prompt : n] = torch.tensor(e.input_ids[e.n_prompt :])
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def answer_loss(model, batch: dict[str, torch.Tensor], *, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over answer tokens only (their mean, or with `reduction="sum"` their sum).

    Logits are computed only from the first position that predicts an answer token on: the
    vocabulary projection over prompt positions is most of a step's memory and wasted.
    """
    batch = {k: v.to(model.device) for k, v in batch.items()}
    labels = batch["labels"]  # [batch, seq]
    answer_cols = (labels != IGNORE).any(dim=0).nonzero()
    start = max(int(answer_cols.min()) - 1, 0)
    keep = torch.arange(start, labels.shape[1] - 1, device=labels.device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits  # [batch, len(keep), vocab]
    targets = labels[:, start + 1 :]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction=reduction
    )


def _prefix_inputs(model, examples: list[Example], layer: int, pad_token_id: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Per example, the residual entering block `layer` over its tokens (`[len, d_model]`).

    The blocks below the trained ones are frozen, so their output is the same at every step: run
    once here, each step then starts at `layer` (`resume_at`) and pays for the trained part only.
    """
    from harness.steering.activations import block_inputs

    out: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        batch = collate([examples[i] for i in idx], pad_token_id)
        hidden = block_inputs(model, [layer], input_ids=batch["input_ids"].to(model.device),
                              attention_mask=batch["attention_mask"].to(model.device))[layer]
        for row, i in enumerate(idx):
            out[i] = hidden[row, : len(examples[i].input_ids)]
    return out


def _micro_batches(idx: list[int], examples: list[Example], n: int) -> list[list[int]]:
    """`idx` sorted by length and cut into `n` parts, so each part pads to a width near its own rows'."""
    ordered = sorted(idx, key=lambda i: (len(examples[i].input_ids), i))
    size = -(-len(ordered) // n)
    return [ordered[k : k + size] for k in range(0, len(ordered), size)]


def _step_loss(model, examples: list[Example], idx: list[int], pad_token_id: int, prefix: list[torch.Tensor] | None,
               first_trained: int, micro_batches: int) -> float:
    """Backward of one step's mean answer loss, accumulated over length-sorted micro-batches
    (the same gradient as one padded batch, with less padding); returns the loss."""
    from contextlib import nullcontext

    from torch.nn.utils.rnn import pad_sequence

    from harness.steering.activations import resume_at

    n_tokens = sum(len(examples[i].input_ids) - examples[i].n_prompt for i in idx)
    total = 0.0
    for part in _micro_batches(idx, examples, micro_batches):
        batch = collate([examples[i] for i in part], pad_token_id)
        context = nullcontext()
        if prefix is not None:
            hidden = pad_sequence([prefix[i] for i in part], batch_first=True)  # [batch, seq, d_model], right-padded
            context = resume_at(model, first_trained, hidden)
        with context:
            loss = answer_loss(model, batch, reduction="sum") / n_tokens
        loss.backward()
        total += loss.item()
    return total


def _set_trainable(model, train_layers: tuple[int, int]) -> list[torch.nn.Parameter]:
    from harness.models.arch import layers

    blocks = layers(model)
    lo, hi = train_layers
    if not 0 <= lo <= hi < len(blocks):
        raise DemoModelError(
            f"refusal_tune.train_layers={list(train_layers)}: needs 0 <= first <= last < {len(blocks)} layers"
        )
    model.requires_grad_(False)
    params = []
    for block in list(blocks)[lo : hi + 1]:
        block.requires_grad_(True)
        params += list(block.parameters())
    return params


def _batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Epoch-wise seeded permutations, cut into `steps` batches."""
    rng = random.Random(seed)
    flat: list[int] = []
    while len(flat) < steps * batch_size:
        perm = list(range(n))
        rng.shuffle(perm)
        flat += perm
    return [flat[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def fine_tune(model, examples: list[Example], tune: RefusalTune, *, pad_token_id: int = 0,
              progress: bool = True, micro_batches: int = 2) -> list[float]:
    """AdamW on the recipe's layers with answer-only loss; returns the per-step loss.

    The pad id never reaches the loss (masked in attention and labels), so any valid id works.
    The frozen blocks below the trained ones run once per example, not once per step, where the
    model allows skipping blocks (`harness.steering.activations.can_resume`).
    """
    from tqdm.auto import tqdm

    from harness.steering.activations import can_resume

    if not examples:
        raise DemoModelError("fine_tune got no examples")
    params = _set_trainable(model, tuple(tune.train_layers))
    first = tune.train_layers[0]
    prefix = _prefix_inputs(model, examples, first, pad_token_id) if first > 0 and can_resume(model) else None
    optimizer = torch.optim.AdamW(params, lr=tune.lr)
    losses: list[float] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tune.seed)
        bar = tqdm(_batch_order(len(examples), tune.steps, tune.batch_size, tune.seed), desc="demo: refusal fine-tune",
                   unit="step", disable=not progress)
        for idx in bar:
            optimizer.zero_grad(set_to_none=True)
            losses.append(_step_loss(model, examples, idx, pad_token_id, prefix, first, micro_batches))
            optimizer.step()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    model.requires_grad_(False)
    return losses
