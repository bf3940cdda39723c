"""The model section of an experiment: its pin, the demo's refusal tune, chat format and generation settings."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.base import Revision, Sha256, Strict


class RefusalTune(Strict):
    """Recipe that turns a non-refusing base model into a refusing one (the CPU demo)."""

    recipe: str = "refusal-sft-v1"
    steps: int = 60
    batch_size: int = 16
    lr: float = 3e-5
    train_layers: tuple[int, int] = (6, 23)
    refusal_text: str = "I'm sorry, but I can't help with that request."
    distill_max_new_tokens: int = 48
    seed: int = 0


class ModelConfig(Strict):
    id: str
    revision: Revision = None
    path: str | None = None
    gguf_file: str | None = None
    gguf_package: str | None = Field(None, description="Python package that ships the GGUF file")
    sha256: Sha256 = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    device_map: str | None = None
    trust_remote_code: bool = False
    family: str | None = Field(None, description="override of the architecture family")
    refusal_tune: RefusalTune | None = None
    expandable_segments: bool = Field(
        True, description="on CUDA, allocate from expandable segments (harness.models.memory."
        "configure_cuda_allocator): freed memory is not stranded in fixed-size pieces, at some cost in allocation "
        "time; false keeps PyTorch's default. An allocator variable in the environment (PYTORCH_CUDA_ALLOC_CONF, "
        "PYTORCH_ALLOC_CONF) overrides both"
    )
    compile_grouped_experts: bool = Field(
        False, description="on CUDA, a mixture-of-experts model loaded with transformers' grouped_mm experts runs "
        "them under torch.compile with symbolic shapes (harness.models.kernels.compiled_grouped_experts) in every "
        "pass that is not a dense decode step: one compile for every layer and token count"
    )

    @model_validator(mode="after")
    def _pinned(self) -> "ModelConfig":
        if self.revision is None and self.path is None and self.gguf_file is None:
            raise ValueError("model needs a pinned `revision` (40-hex), a local `path`, or a `gguf_file`")
        if self.gguf_file is not None and self.sha256 is None:
            raise ValueError("a `gguf_file` needs its `sha256`")
        return self


class GenerationConfig(Strict):
    backend: Literal["transformers", "static", "vllm"] = "transformers"
    compile_step: bool = Field(False, description="static backend: torch.compile the decode step (CUDA)")
    compile_experts: bool = Field(
        False, description="static backend, gpt-oss on CUDA, instead of compile_step: torch.compile only the dense "
        "experts of the decode step (harness.generation.moe.compiled_dense_experts), one compile for every layer, "
        "batch size, condition and hook set; the rest of the step runs as an uncompiled CUDA graph"
    )
    hooked_step: Literal["shared", "compiled", "graph"] = Field(
        "shared", description="with compile_step, how conditions that run forward hooks decode. shared: every "
        "condition runs one compiled step whose hooks hold the edit as data (zero for the baseline; ablation, ActAdd "
        "and one-vector nullspace or reflection write into them; other hooks still compile their own step); "
        "compiled: each hook set compiles its own step; graph: hooked conditions run an uncompiled CUDA graph, "
        "sparing their compile, and the hook-free step is compiled once for the baseline and weight-edited conditions"
    )
    compiled_rows: int | None = Field(
        None, ge=1, description="with compile_step, every batch is padded to this many rows (copies of its first "
        "prompt, discarded), so one compiled step serves sets of every size; dynamo compiles once per batch shape. "
        "At least batch_size and joint_batch_size. On out-of-memory the batch and this row count are halved together "
        "(a new compiled step, with a warning): set both lower for a smaller GPU"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vllm backend: GPUs per model")
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    joint_batch_size: int | None = Field(
        None, ge=1, description="generate each condition's harmful and harmless evaluation prompts together, in "
        "batches of this many rows: a decode step reads the weights once for both sets (unset: one set per call, "
        "in batches of batch_size)"
    )
    temperature: float = 0.0
    system_prompt: str | None = None

    @model_validator(mode="after")
    def _compile_settings(self) -> GenerationConfig:
        if self.compile_experts and (self.backend != "static" or self.compile_step):
            raise ValueError("compile_experts applies to backend = \"static\" without compile_step (a compiled "
                             "step compiles its experts with it)")
        if (self.hooked_step != "shared" or self.compiled_rows is not None) and not (
                self.backend == "static" and self.compile_step):
            raise ValueError("hooked_step and compiled_rows only apply to backend = \"static\" with "
                             "compile_step = true")
        widest = max(self.batch_size, self.joint_batch_size or 0)
        if self.compiled_rows is not None and self.compiled_rows < widest:
            raise ValueError(f"compiled_rows = {self.compiled_rows} is narrower than the widest batch ({widest}): "
                             "a batch is padded up to it, never cut")
        return self

    def compiles(self, hooked: bool) -> bool:
        """Whether a condition's decode step is compiled (`hooked`: it runs forward hooks)."""
        return self.backend == "static" and self.compile_step and (self.hooked_step != "graph" or not hooked)

    def shares_step(self, hooked: bool) -> bool:
        """Whether a condition decodes through the shared hooks (`harness.steering.interventions.shared_hooks`)."""
        return self.compiles(hooked) and self.hooked_step == "shared"

    def step_note(self, hooked: bool) -> str:
        """How a condition's decode step ran, for the report ("" unless the static backend compiles)."""
        if self.backend == "static" and self.compile_experts:
            return "uncompiled CUDA graph around compiled experts"
        if not (self.backend == "static" and self.compile_step):
            return ""
        if not self.compiles(hooked):
            return "uncompiled CUDA graph"
        return "compiled step shared by the conditions, edits as hook data" if self.shares_step(hooked) \
            else "compiled step"


class ChatConfig(Strict):
    """How prompts are formatted and completions read; unset fields take the model family's default
    (harness.models.chat.family_chat_defaults), so a reasoning model is scored at its answer, not its reasoning."""

    template_kwargs: dict[str, str | bool | int | float] | None = Field(
        None, description="extra chat-template variables, e.g. { enable_thinking = false } or "
        "{ reasoning_effort = \"low\" }"
    )
    date: str = Field("2026-01-01", description="the date every strftime_now() in the template sees")
    answer_prefix: str | None = Field(None, description="fixed text after the generation prompt before the answer")
    reasoning: Literal["none", "think", "harmony"] | None = None
    refusal_tokens: list[str] | None = Field(None, description="openings whose first token the refusal score counts")
    strip_answer: bool = Field(
        False, description="strip whitespace around each answer before it is judged (a study that decoded with "
        "`.strip()`); the raw completion stays in the cache"
    )

    @field_validator("date")
    @classmethod
    def _date(cls, value: str) -> str:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(f"date must be YYYY-MM-DD, got {value!r}")
        return value

    @field_validator("refusal_tokens")
    @classmethod
    def _tokens(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or any(not t.strip() for t in value)):
            raise ValueError(f"refusal_tokens must be non-empty openings, got {value!r}")
        return value
