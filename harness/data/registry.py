"""The registry of pinned datasets: each name's source, revision, file and SHA-256.

Only names, pins and parsers live here; `harness.data.loading` finds, verifies and reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import REPO_ROOT
from harness.config import DatasetRef
from harness.data.parsers import (
    DatasetError,
    parse_advbench,
    parse_arc,
    parse_arc_demo,
    parse_harmbench,
    parse_instructions,
    parse_jbb_csv,
    parse_mmlu,
    parse_mmlu_demo,
    parse_policy_prompts,
    parse_project_policy,
    parse_project_prompts,
    parse_sorry_bench,
    parse_sorry_judgments,
    parse_system_prompt,
    parse_text_demo,
    parse_xstest,
)

PROJECT = "refusal-harness"


ARDITI_REPO = "andyrdt/refusal_direction"
ARDITI_COMMIT = "9d852fae1a9121c78b29142de733cb1340770cc3"
POLICY_REPO = "MatthesF/refusal-ablation"
POLICY_COMMIT = "985cee4484e412626fe805310178051cfb76cb37"
MMLU_REVISION = "c30699e8356da336a370243923dbaf21066bb9fe"
ARC_REVISION = "210d026faf9955653af8916fad021475a3f00453"
UNPINNED_HF = ("no SHA-256 recorded yet: a download from the pinned revision records its own, a local copy needs "
               "`sha256` in the experiment's dataset entry")


@dataclass(frozen=True)
class Source:
    """One pinned file and how to read it. `host` is "github", "hf" (a Hugging Face dataset repo) or
    "project" (a file of this repository at `path`, relative to its root; never downloaded)."""

    host: str
    repo: str
    revision: str
    path: str
    local: str
    sha256: str | None
    parse: Callable[[Path], pd.DataFrame]
    rows: int | None = None
    gated: bool = False
    note: str = ""
    shots: str | None = None  # the registry entry few-shot examples of this set are drawn from (dev/train split)

    @property
    def url(self) -> str:
        if self.host == "project":
            return (REPO_ROOT / self.path).as_uri()
        if self.host == "github":
            return f"https://raw.githubusercontent.com/{self.repo}/{self.revision}/{self.path}"
        return f"https://huggingface.co/datasets/{self.repo}/resolve/{self.revision}/{self.path}"


def _arditi(path: str, local: str, sha: str, parse: Callable[[Path], pd.DataFrame], rows: int) -> Source:
    return Source("github", ARDITI_REPO, ARDITI_COMMIT, path, local, sha, parse, rows)


def _project(path: str, sha: str, parse: Callable[[Path], pd.DataFrame], rows: int, note: str,
             shots: str | None = None) -> Source:
    return Source("project", PROJECT, "", path, path, sha, parse, rows, note=note, shots=shots)


def _split(name: str, sha: str, rows: int) -> Source:
    return _arditi(f"dataset/splits/{name}.json", f"refusal_direction/splits/{name}.json", sha, parse_instructions, rows)


DATASETS: dict[str, Source] = {
    "harmful_train": _split("harmful_train", "8f5c0eac0efd2a7f99084bbe8d0de2c465e31b1997184783c917969d9de9ece1", 260),
    "harmful_val": _split("harmful_val", "305f1d1e6dfa6c50a32d24a18ef815f42b5441eb83e6d7767d242107162fd9f4", 39),
    "harmful_test": _split("harmful_test", "5e12ae102c3791dee083a69ab6269a78e033411c629bc3f66f75d2fde196d9ef", 572),
    "harmless_train": _split("harmless_train", "86623b1f8a25aa35df153fc97a556dbcebb6a7c881538ae43ee479ca17f2e002", 18793),
    "harmless_val": _split("harmless_val", "772010758e7d771ef4c7e5e4acdfd7598dcece1a6f383f20d382f640913a2a4d", 6264),
    "harmless_test": _split("harmless_test", "1b5930ce5e855ada758b3116ce7c4aaea9b9d05f8cdd77b385511d4c84173b19", 6266),
    "alpaca": _arditi(
        "dataset/processed/alpaca.json", "refusal_direction/processed/alpaca.json",
        "c4ce1bdc5c9b92caabcb171c27c7ec1e79832836bae10291d7c8ab8c6245f600", parse_instructions, 31323,
    ),
    "jailbreakbench": _arditi(
        "dataset/raw/jailbreakbench.csv", "jailbreakbench/jbb_behaviors_harmful.csv",
        "45e9a8923b28f547bb372fbaa9af7df8b38c818a80ae50c3bab97704197ff516", parse_jbb_csv, 100,
    ),
    "advbench": _arditi(
        "dataset/raw/advbench.csv", "advbench/harmful_behaviors.csv",
        "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1", parse_advbench, 520,
    ),
    "harmbench_val": _arditi(
        "dataset/raw/harmbench_val.csv", "harmbench/harmbench_behaviors_text_val.csv",
        "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534", parse_harmbench, 80,
    ),
    "harmbench_test": _arditi(
        "dataset/raw/harmbench_test.csv", "harmbench/harmbench_behaviors_text_test.csv",
        "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29", parse_harmbench, 320,
    ),
    "xstest": Source(
        "github", "paul-rottger/exaggerated-safety", "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d", "xstest_prompts.csv",
        "xstest/xstest_prompts.csv", "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
        parse_xstest, 450,
    ),
    "policy_prompts": Source(
        "github", POLICY_REPO, POLICY_COMMIT, "data/gemma_policy_prompts.csv",
        "gemma4_policy_reference/gemma_policy_prompts.csv",
        "dd76fbb1d78d61aed045f2417e9b3fb5137b7572bda022d322ee2e7b36a29c47", parse_policy_prompts, 480,
    ),
    "sorry_bench_reference_judgments": Source(
        "github", POLICY_REPO, POLICY_COMMIT, "artifacts/sorry_bench_official_judgments.csv",
        "gemma4_policy_reference/results/sorry_bench_official_judgments.csv",
        "28ea559631a293483b021e25b8b846a4e037d8cbd824adff25fbf5acfd70d268", parse_sorry_judgments, 880,
    ),
    # No offline copy of the following; the SHA-256 is pinned where a public record of it could be checked.
    "jailbreakbench_benign": Source(
        "hf", "JailbreakBench/JBB-Behaviors", "886acc352a31533ffbcf4ef22c744658688086fc",
        "data/benign-behaviors.csv", "jailbreakbench/benign-behaviors.csv", None, parse_jbb_csv, 100,
        note="revision from a public pin; sha256 unknown until first fetch (recorded in the cache)",
    ),
    "sorry_bench": Source(
        "hf", "sorry-bench/sorry-bench-202503", "612a4e1f45db8adf884fa62318ddf9fa1c6e75e9", "question.jsonl",
        "sorry_bench/question.jsonl", None, parse_sorry_bench, 440, gated=True,
        note="gated on the Hugging Face hub: accept the terms, set HF_TOKEN, or place question.jsonl locally and pin "
        "its sha256 in the experiment's dataset entry",
    ),
    "mmlu": Source(
        "hf", "cais/mmlu", MMLU_REVISION, "all/test-00000-of-00001.parquet",
        "mmlu/test-00000-of-00001.parquet", None, parse_mmlu, 14042, shots="mmlu_dev", note=UNPINNED_HF,
    ),
    # MMLU's 5-shot examples: the dev split, 5 per subject (lm-evaluation-harness: fewshot_split dev, first_n).
    "mmlu_dev": Source(
        "hf", "cais/mmlu", MMLU_REVISION, "all/dev-00000-of-00001.parquet",
        "mmlu/dev-00000-of-00001.parquet", None, parse_mmlu, 285, note=UNPINNED_HF,
    ),
    "arc_challenge": Source(
        "hf", "allenai/ai2_arc", ARC_REVISION, "ARC-Challenge/test-00000-of-00001.parquet",
        "arc_challenge/test-00000-of-00001.parquet",
        "62f03257e737aed263f55c6abf87c7bb0028a44a6bdd2a26eb1279eb42c1d1e9", parse_arc, 1172, shots="arc_challenge_train",
        note="sha256 is the hub's LFS oid for this revision as recorded publicly; not yet checked against a download",
    ),
    # ARC-Challenge's few-shot examples: its train split (lm-evaluation-harness: training_split train).
    "arc_challenge_train": Source(
        "hf", "allenai/ai2_arc", ARC_REVISION, "ARC-Challenge/train-00000-of-00001.parquet",
        "arc_challenge/train-00000-of-00001.parquet", None, parse_arc, 1119, note=UNPINNED_HF,
    ),
    # The project's own hand-written files (data/README.md, data/capability/README.md).
    "demo_policy_prompts": _project(
        "data/policy_prompts.csv", "fb6a6f038299dd7cec0b4a8dfcaa4f7687ac9f223829d83c75f0e868e87f7962",
        parse_project_policy, 480, note="the CPU demo's construction set, written for this project",
    ),
    "mmlu_demo": _project(
        "data/capability/mmlu_demo.jsonl", "867e5853460abaf82935e3206c7d54c7b8166ddbe4565a4d33bfa0514777ded9",
        parse_mmlu_demo, 42, note="MMLU-shaped stand-in written for this project; not MMLU", shots="mmlu_demo_dev",
    ),
    "mmlu_demo_dev": _project(
        "data/capability/mmlu_demo_dev.jsonl", "b5af2b568b65a0d7ce26f00ff83b95d74b7f09bd01091f71311a9817e2f7b45b",
        parse_mmlu_demo, 80, note="the MMLU stand-in's shots, 5 per subject, written for this project",
    ),
    "arc_demo": _project(
        "data/capability/arc_demo.jsonl", "d65ebea2cffc361ba2d27960f9d8935907ae92f8d5cf17412cb7492c43d4520e",
        parse_arc_demo, 41, note="ARC-shaped stand-in written for this project; not ARC", shots="arc_demo_train",
    ),
    "arc_demo_train": _project(
        "data/capability/arc_demo_train.jsonl", "b3998b47b45264e548e0a617bcbf64b07f76eb1b1a9dda24f03b54833066246d",
        parse_arc_demo, 20, note="the ARC stand-in's shot pool, written for this project",
    ),
    "text_demo": _project(
        "data/capability/text_demo.txt", "60605826fe025e297918c59fabd15d4d921f60f19698b78d90ff356d84ec5cba",
        parse_text_demo, 32, note="neutral prose paragraphs written for this project (CE loss)",
    ),
    "agent_shell_contrast": _project(
        "data/agent_shell_contrast.csv", "c3f0bf0c89ad4cb5e0cc9628da769ab597e22a355a3730ff903515cc76d9d458",
        parse_project_prompts, 50, note="the qwen3.5-4b study's contrast set (shell-execution requests), written for "
        "this project",
    ),
    "agent_system_prompt": _project(
        "data/agent_system_prompt.txt", "ae5c20c52c1d14dcf2f518c37d2a35cdf4f283e9c10bab783e0dd7b8b26ddd08",
        parse_system_prompt, 1, note="the terminal-agent system prompt of the contrast set, written for this project",
    ),
    "agent_shell_benign": _project(
        "data/agent_shell_benign.csv", "6168c12fd36ff60339a5dd55d7dc5bf8a0527898e5ccbc548fec26e2ec8bc432",
        parse_project_prompts, 80, note="held-out benign agent/shell requests, disjoint from the contrast set, "
        "written for this project",
    ),
}
_SPLIT_ALIASES = {("harmbench", "val"): "harmbench_val", ("harmbench", "test"): "harmbench_test",
                  ("jailbreakbench", "harmful"): "jailbreakbench", ("jailbreakbench", "benign"): "jailbreakbench_benign"}


def resolve_name(ref: DatasetRef) -> str:
    name = _SPLIT_ALIASES.get((ref.name, ref.split), ref.name) if ref.split else ref.name
    if ref.split and name == ref.name and f"{ref.name}_{ref.split}" in DATASETS:
        name = f"{ref.name}_{ref.split}"
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {ref.name!r} (split {ref.split!r}); registered: {', '.join(sorted(DATASETS))}")
    return name
