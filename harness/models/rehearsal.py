"""Rehearsal models: the pinned model's architecture with random weights, and its own tokenizer and
chat template, so a whole experiment runs end to end before anyone downloads its weights.

`full` keeps the real config at full size (a GPU run: memory and speed of the real thing); `tiny` keeps
the family and the tokenizer/template but shrinks depth and width so the experiment runs on a laptop CPU.
Config and tokenizer come from `$HARNESS_TOKENIZERS_DIR` (offline copies), from the model's GGUF file,
or from the pinned hub revision (small files only). Where no real config is available the family's tiny one
stands in; where a real template comes without its tokenizer, a real vocabulary borrowed from another model
(`STAND_IN_VOCABULARY`) with the model's own special tokens reads it, else the family's tiny tokenizer.
`RehearsalModel.stand_ins` says which, for the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from harness.config import ModelConfig
from harness.models.kernels import configure_model_kernels

Mode = Literal["tiny", "full"]
MODES: tuple[str, ...] = ("tiny", "full")

# Hub id patterns -> architecture family, for models whose config is not available offline (first match wins).
_FAMILY_BY_ID = (
    (r"gemma-4", "gemma4"),
    (r"gemma-3", "gemma3"),
    (r"gemma-2-", "gemma2"),
    (r"gemma", "gemma"),
    (r"qwen3\.5", "qwen3_5"),
    (r"qwen3", "qwen3"),
    (r"qwen2", "qwen2"),
    (r"gpt-oss", "gpt_oss"),
    (r"mistral", "mistral"),
    (r"llama|smollm", "llama"),
)

# Attribute -> tiny value; applied where the config has the attribute.
_TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "moe_intermediate_size": 48,
    "num_attention_heads": 4,
    "head_dim": 16,
    "global_head_dim": 32,
    "num_local_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "experts_per_token": 2,
    "top_k_experts": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "hidden_size_per_layer_input": 8,
}
TINY_LAYERS = 4  # the selection sweep prunes the top 20% of layers and layer 0 has no direction at template positions


class RehearsalError(RuntimeError):
    """A rehearsal that cannot be set up as asked; the message says what is missing."""


@dataclass
class RehearsalModel:
    model: Any
    tokenizer: Any
    family: str
    config_source: str
    tokenizer_source: str
    stand_ins: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"family": self.family, "config": self.config_source, "tokenizer": self.tokenizer_source,
                "stand_ins": self.stand_ins, "parameters": sum(p.numel() for p in self.model.parameters())}


def family_from_id(model_id: str) -> str:
    """The architecture family a hub id names, for rehearsing a model whose config is not at hand."""
    lowered = model_id.lower()
    for pattern, family in _FAMILY_BY_ID:
        if re.search(pattern, lowered):
            return family
    raise RehearsalError(f"cannot tell the architecture family of {model_id!r}; set model.family in the experiment")


def _sources(cfg: ModelConfig) -> tuple[Path | None, dict, str]:
    """(folder or None, from_pretrained kwargs, description) where the real config/tokenizer can be read."""
    from harness.models.loading import gguf_path, verify_sha256
    from harness.models.tokenizer_files import local_model_files

    if cfg.gguf_file is not None:
        path = gguf_path(cfg)
        verify_sha256(path, cfg.sha256)
        return path.parent, {"gguf_file": path.name}, f"GGUF file {path.name} (sha256 verified)"
    if cfg.path is not None:
        return Path(cfg.path), {}, f"local path {cfg.path}"
    local = local_model_files(cfg.id)
    if local is not None:
        return local, {}, f"offline copy {local.name} ($HARNESS_TOKENIZERS_DIR)"
    return None, {}, ""


def _hub(kind: str, cfg: ModelConfig):
    """Config or tokenizer at the pinned revision from the hub (small files), or None when offline."""
    from transformers import AutoConfig, AutoTokenizer

    loader = AutoConfig if kind == "config" else AutoTokenizer
    try:
        return loader.from_pretrained(cfg.id, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except OSError:
        return None


def _load_config(cfg: ModelConfig, folder: Path | None, kwargs: dict, where: str):
    from transformers import AutoConfig

    if folder is not None and ((folder / "config.json").is_file() or "gguf_file" in kwargs):
        return AutoConfig.from_pretrained(folder, **kwargs), where
    config = _hub("config", cfg)
    return (config, f"{cfg.id}@{cfg.revision} (hub)") if config is not None else (None, "")


def _load_tokenizer(cfg: ModelConfig, folder: Path | None, kwargs: dict, where: str):
    from transformers import AutoTokenizer

    if folder is not None and ((folder / "tokenizer.json").is_file() or "gguf_file" in kwargs):
        return AutoTokenizer.from_pretrained(folder, **kwargs), where
    tokenizer = _hub("tokenizer", cfg)
    return (tokenizer, f"{cfg.id}@{cfg.revision} (hub)") if tokenizer is not None else (None, "")


def shrink_config(config) -> None:
    """In place: the same architecture at toy depth and width (every layer type kept, vocabulary kept)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name, value in _TINY.items():
        if getattr(text, name, None) is not None:
            setattr(text, name, value)
    kv = getattr(text, "num_key_value_heads", None)
    if kv is not None:
        text.num_key_value_heads = 1 if kv == 1 else 2
    if getattr(text, "sliding_window", None):
        text.sliding_window = min(text.sliding_window, 16)
    types = getattr(text, "layer_types", None)
    n = TINY_LAYERS
    if types:
        wanted = set(types)
        n = next(k for k in range(1, len(types) + 1) if set(types[:k]) == wanted)
        n = max(n, min(TINY_LAYERS, len(types)))
        text.layer_types = list(types[:n])
    text.num_hidden_layers = n
    if getattr(text, "max_window_layers", None) is not None:
        text.max_window_layers = n


def _tokenizer_config(folder: Path) -> dict:
    """The folder's tokenizer_config.json ({} where there is none)."""
    import json

    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _template_only(folder: Path | None) -> str | None:
    """A chat template shipped without its tokenizer (gemma-2b-it here): the real template on a stand-in."""
    if folder is None:
        return None
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    return _tokenizer_config(folder).get("chat_template")


@dataclass
class _Pinned:
    """Where the pinned model's small files are, and its config (None where none is at hand)."""

    folder: Path | None
    kwargs: dict
    where: str
    config: Any
    config_source: str
    family: str


def _pinned(cfg: ModelConfig) -> _Pinned:
    from harness.models.arch import family_of

    folder, kwargs, where = _sources(cfg)
    config, config_source = _load_config(cfg, folder, kwargs, where)
    family = cfg.family or (family_of(config) if config is not None else family_from_id(cfg.id))
    return _Pinned(folder, kwargs, where, config, config_source, family)


def _tokenizer(cfg: ModelConfig, pinned: _Pinned) -> tuple[Any, str, list[str]]:
    """(tokenizer, where it came from, stand-ins) for the pinned files."""
    from harness.models.tiny import tiny_tokenizer

    family, where = pinned.family, pinned.where
    tokenizer, source = _load_tokenizer(cfg, pinned.folder, pinned.kwargs, where)
    if tokenizer is not None:
        return tokenizer, source, []
    template = _template_only(pinned.folder)
    if template is not None:
        borrowed = _borrowed_vocabulary(pinned.folder, template)
        if borrowed is not None:
            note = (f"no tokenizer for {cfg.id} offline: {STAND_IN_VOCABULARY}'s byte-level BPE vocabulary "
                    f"({len(borrowed):,} tokens with {cfg.id}'s special tokens) stands in under the real chat template")
            source = f"{STAND_IN_VOCABULARY} vocabulary with the real special tokens and chat template of {where}"
            return borrowed, source, [note]
        tokenizer = tiny_tokenizer(family)
        tokenizer.chat_template = template
        return tokenizer, f"tiny {family} tokenizer with the real chat template of {where}", [
            f"no tokenizer for {cfg.id} offline: the tiny {family} tokenizer stands in under the real chat template"]
    return tiny_tokenizer(family), f"tiny {family} tokenizer and template (stand-in)", [
        f"no tokenizer or template for {cfg.id} offline: the tiny {family} tokenizer and template stand in"]


# A chat template shipped without its tokenizer is read by this real byte-level BPE vocabulary, with the model's own
# special tokens added, where an offline copy of it exists. The tiny stand-in's ~700-token vocabulary reads the
# Arditi validation prompts at ~2.3x the tokens (gemma-2b-it: 1,893 against 810 for harmful_val) and decodes only
# ~0.3% of a 256k-vocabulary model's random ids (59% decode here), so a full rehearsal timed too much prompt work
# and almost no judge work.
STAND_IN_VOCABULARY = "Qwen/Qwen3-8B"


def _special_tokens(folder: Path) -> tuple[dict[int, str], dict[str, str]]:
    """The real tokenizer's special tokens from its tokenizer_config.json: ({real id: text}, {"bos_token": text, ...})."""
    config = _tokenizer_config(folder)
    added = {int(i): t["content"] for i, t in config.get("added_tokens_decoder", {}).items() if t.get("special", True)}
    roles = {}
    for role in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(role)
        text = value.get("content") if isinstance(value, dict) else value
        if text:
            roles[role] = text
    return added, roles


def _borrowed_vocabulary(folder: Path, template: str):
    """`STAND_IN_VOCABULARY`'s tokenizer with the real special tokens added (never split) and the real template, or
    None where either is not at hand."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from harness.models.tokenizer_files import has_tokenizer, local_model_files

    added, roles = _special_tokens(folder)
    donor = local_model_files(STAND_IN_VOCABULARY)
    if not added or donor is None or not has_tokenizer(donor):
        return None
    raw = Tokenizer.from_file(str(donor / "tokenizer.json"))
    raw.add_special_tokens([AddedToken(text, special=True, normalized=False) for _, text in sorted(added.items())])
    return PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=template,
                                   name_or_path=str(donor), **roles)


def pinned_tokenizer(cfg: ModelConfig) -> tuple[Any, str, str, list[str]]:
    """(tokenizer, where it came from, family, stand-ins): the model's own tokenizer and template where they
    are at hand; else a stand-in (`_tokenizer`): a real vocabulary or the family's tiny tokenizer under the real
    template where that exists, the tiny tokenizer and template where it does not."""
    pinned = _pinned(cfg)
    tokenizer, source, stand_ins = _tokenizer(cfg, pinned)
    return tokenizer, source, pinned.family, stand_ins


def rehearsal_model(cfg: ModelConfig, mode: Mode, device: str = "cpu", seed: int = 0) -> RehearsalModel:
    """Random weights of the pinned model's config (shrunk when `tiny`) with its own tokenizer and template."""
    from transformers import AutoModelForCausalLM

    from harness.models.loading import DTYPES
    from harness.models.tiny import randomize_zero_inits, tiny_model

    if mode not in MODES:
        raise RehearsalError(f"--rehearse takes one of {MODES}, got {mode!r}")
    pinned = _pinned(cfg)
    config, config_source, family = pinned.config, pinned.config_source, pinned.family
    tokenizer, tokenizer_source, stand_ins = _tokenizer(cfg, pinned)
    tokenizer_stands_in = bool(stand_ins)
    if config is None:
        if mode == "full":
            raise RehearsalError(
                f"--rehearse full needs the real config of {cfg.id}@{cfg.revision}: put its config.json in "
                "$HARNESS_TOKENIZERS_DIR/<name>/ or run where the hub is reachable"
            )
        model, _ = tiny_model(family, seed=seed)
        config_source = f"tiny {family} config (stand-in)"
        stand_ins.append(f"no config for {cfg.id} offline: the tiny {family} architecture stands in")
        with torch.random.fork_rng(devices=[]):  # the new embedding rows are random too: seeded, as the rest
            torch.manual_seed(seed)
            model.resize_token_embeddings(max(len(tokenizer), model.config.vocab_size))
        real_layers = None
    else:
        config = _clean(config)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        real_layers = text.num_hidden_layers
        if mode == "tiny":
            shrink_config(config)
        text.vocab_size = max(int(text.vocab_size), len(tokenizer))
        dtype = torch.float32 if mode == "tiny" else DTYPES[cfg.dtype]
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            randomize_zero_inits(model)
    _generation_config(model, pinned.folder, tokenizer, stand_in=tokenizer_stands_in)
    model.config.harness_real_layers = real_layers
    if cfg.family is not None:
        model.config.harness_family = cfg.family
    model.to(device).eval().requires_grad_(False)
    configure_model_kernels(model, grouped_experts_compiled=cfg.compile_grouped_experts)
    return RehearsalModel(model, tokenizer, family, config_source, tokenizer_source, stand_ins)


def _generation_config(model, folder: Path | None, tokenizer, stand_in: bool) -> None:
    """The model's own generation config (its stop tokens) where it is at hand, else the tokenizer's EOS. Under a
    stand-in tokenizer its special-token ids are the stand-in's ids of the same tokens (the real <eos> is 1 in
    gemma-2b-it's vocabulary, another id in a borrowed one)."""
    from transformers import GenerationConfig

    if folder is not None and (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
        if stand_in:
            _renumber_special_ids(model.generation_config, _special_tokens(folder)[0], tokenizer)
    elif tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _renumber_special_ids(config, real: dict[int, str], tokenizer) -> None:
    """In place: each bos/eos/pad id of `config` (the real vocabulary's) as `tokenizer`'s id of the same token; one the
    real tokenizer's files do not name falls back to the tokenizer's own (eos, bos, pad)."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config, name, None)
        if value is None:
            continue
        ids = [value] if isinstance(value, int) else list(value)
        fallback = getattr(tokenizer, name)
        mapped = [tokenizer.convert_tokens_to_ids(real[i]) if i in real else fallback for i in ids]
        mapped = list(dict.fromkeys(i for i in mapped if i is not None))
        setattr(config, name, (mapped[0] if isinstance(value, int) else mapped) if mapped else None)


def scaled_layer(layer: int, model) -> int:
    """A layer the experiment fixes for the real model, at the same relative depth of a shrunk rehearsal model."""
    from harness.models.arch import n_layers

    n = n_layers(model)
    real = getattr(model.config, "harness_real_layers", None) or max(layer + 1, n)
    return min(n - 1, layer * n // real)


def _clean(config):
    """A config a random-init model can be built from: quantized checkpoints (MXFP4 experts) are
    rehearsed in the dtype the harness dequantizes them to."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config
