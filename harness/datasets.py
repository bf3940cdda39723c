"""Pinned, SHA-256-verified, offline-capable benchmark loaders.

Every dataset is a registry entry: where it comes from (repository + commit/revision + path), the
SHA-256 of that file, where a local copy lives under $HARNESS_DATA_DIR, and a parser to a DataFrame
with columns `id`, `prompt`, `category` (and `label` where the source has one). A local copy is
preferred; without one the pinned upstream file is downloaded once into the harness cache. A file
that does not match its pin is never parsed. Project files (`host = "project"`: the hand-written
sets in the repository's own `data/`) are loaded by name too, SHA-256 pinned like the rest, so an
experiment never reads a dataset from a fixed path.

`placeholder_frame(name)` gives a dataset's schema, ids, categories and row count with prompts that
say they are placeholders, for rehearsing an experiment before the data is at hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.cache import atomic_write_bytes, cache_root
from harness.config import DatasetRef
from harness.pins import sha256_file
from harness.prompt_sets import seeded_subset

DATA_ENV = "HARNESS_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent

PROJECT = "refusal-harness"
LETTERS = "ABCDEFGHIJ"

ARDITI_REPO = "andyrdt/refusal_direction"
ARDITI_COMMIT = "9d852fae1a9121c78b29142de733cb1340770cc3"
POLICY_REPO = "MatthesF/refusal-ablation"
POLICY_COMMIT = "985cee4484e412626fe805310178051cfb76cb37"
MMLU_REVISION = "c30699e8356da336a370243923dbaf21066bb9fe"
ARC_REVISION = "210d026faf9955653af8916fad021475a3f00453"
UNPINNED_HF = ("no SHA-256 recorded yet: a download from the pinned revision records its own, a local copy needs "
               "`sha256` in the experiment's dataset entry")


class DatasetError(RuntimeError):
    """A dataset that cannot be used: unknown name, missing file, pin mismatch or bad format."""


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


# ---------------------------------------------------------------- parsers (upstream format -> frame)


def _frame(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Give a frame stable string ids and put the common columns first."""
    out = rows.reset_index(drop=True)
    if "id" not in out:
        out.insert(0, "id", [f"{prefix}-{i}" for i in range(len(out))])
    out["id"] = out["id"].astype(str)
    if "category" not in out:
        out["category"] = None
    first = [c for c in ("id", "prompt", "category", "label") if c in out]
    return out[first + [c for c in out.columns if c not in first]]


def _read_json_list(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _require(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")


def parse_instructions(path: Path) -> pd.DataFrame:
    """refusal_direction `{"instruction", "category"}` JSON lists (splits/ and processed/)."""
    frame = pd.DataFrame(_read_json_list(path))
    _require(frame, ["instruction"], path)
    frame = frame.rename(columns={"instruction": "prompt"})
    return _frame(frame, path.stem)


def parse_jbb_csv(path: Path) -> pd.DataFrame:
    """JBB-Behaviors CSV (Goal, Target, Behavior, Category, Source); the vendored copy has an index column."""
    frame = pd.read_csv(path)
    _require(frame, ["Goal", "Behavior", "Category"], path)
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed") or c == "Index"])
    frame = frame.rename(columns={"Goal": "prompt", "Category": "category", "Target": "target", "Behavior": "behavior", "Source": "source"})
    return _frame(frame, "jbb")


def parse_advbench(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    _require(frame, ["goal", "target"], path)
    return _frame(frame.rename(columns={"goal": "prompt"}), "advbench")


def parse_harmbench(path: Path) -> pd.DataFrame:
    """HarmBench behaviors CSV; `category` is SemanticCategory, `functional_category` keeps standard/contextual/copyright."""
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"], path)
    frame = frame.rename(
        columns={
            "Behavior": "prompt",
            "SemanticCategory": "category",
            "FunctionalCategory": "functional_category",
            "BehaviorID": "id",
            "ContextString": "context",
            "Tags": "tags",
        }
    )
    return _frame(frame, "harmbench")


def parse_xstest(path: Path) -> pd.DataFrame:
    """XSTest v2: `label` is safe/unsafe, `category` the prompt type."""
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["id", "prompt", "type", "label"], path)
    return _frame(frame.rename(columns={"type": "category"}), "xstest")


def parse_policy_prompts(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    _require(frame, ["id", "prompt", "label", "category", "policy_area"], path)
    return _frame(frame, "policy")


def parse_sorry_bench(path: Path) -> pd.DataFrame:
    """SORRY-Bench question.jsonl: `{"question_id", "category", "turns": [prompt], "prompt_style"}`."""
    records = _read_jsonl(path)
    rows = []
    for rec in records:
        missing = [k for k in ("question_id", "category", "turns") if k not in rec]
        if missing:
            raise DatasetError(f"{path}: question record {rec.get('question_id')!r} lacks {missing}")
        if len(rec["turns"]) != 1:
            raise DatasetError(f"{path}: question {rec['question_id']} has {len(rec['turns'])} turns, expected 1")
        rows.append(
            {
                "id": str(rec["question_id"]),
                "question_id": int(rec["question_id"]),
                "prompt": rec["turns"][0],
                "category": str(rec["category"]),
                "prompt_style": rec.get("prompt_style", "base"),
            }
        )
    return _frame(pd.DataFrame(rows), "sorry")


def parse_sorry_judgments(path: Path) -> pd.DataFrame:
    """The reference experiment's per-question official-judge scores (no answer text): one row per question x condition."""
    frame = pd.read_csv(path)
    _require(frame, ["question_id", "condition", "category", "score"], path)
    frame.insert(0, "id", frame["condition"].astype(str) + "-" + frame["question_id"].astype(str))
    frame["category"] = frame["category"].astype(str)
    return _frame(frame, "judgment")


def _read_table(path: Path) -> pd.DataFrame:
    """HF dataset rows: the pinned parquet, or the same columns as JSON lines (what fixtures use)."""
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise DatasetError(f"{path}: reading parquet needs `pyarrow` (pip install pyarrow): {err}") from err
    return pd.DataFrame(_read_jsonl(path))


def parse_mmlu(path: Path) -> pd.DataFrame:
    """cais/mmlu rows `{question, subject, choices: [4], answer: int}` -> prompt, category=subject, choices, label."""
    frame = _read_table(path)
    _require(frame, ["question", "subject", "choices", "answer"], path)
    frame = frame.rename(columns={"question": "prompt", "subject": "category", "answer": "label"})
    frame["choices"] = frame["choices"].map(list)
    frame["label"] = frame["label"].astype(int)
    bad = frame[(frame["label"] < 0) | (frame["label"] >= frame["choices"].map(len))]
    if len(bad):
        raise DatasetError(f"{path}: answer index out of range in rows {bad.index.tolist()[:5]}")
    return _frame(frame, "mmlu")


def parse_arc(path: Path) -> pd.DataFrame:
    """allenai/ai2_arc rows `{id, question, choices: {text, label}, answerKey}` -> choices, label (index of answerKey)."""
    frame = _read_table(path)
    _require(frame, ["id", "question", "choices", "answerKey"], path)
    labels, texts, answers = [], [], []
    for row in frame.itertuples():
        letters, options = list(row.choices["label"]), list(row.choices["text"])
        if row.answerKey not in letters:
            raise DatasetError(f"{path}: question {row.id}: answerKey {row.answerKey!r} not among {letters}")
        labels.append(letters)
        texts.append(options)
        answers.append(letters.index(row.answerKey))
    out = pd.DataFrame(
        {"id": frame["id"], "prompt": frame["question"], "category": "ARC-Challenge", "label": answers,
         "choices": texts, "choice_labels": labels}
    )
    return _frame(out, "arc")


def parse_project_policy(path: Path) -> pd.DataFrame:
    """The project's construction CSV through `harness.policy.load_policy_prompts` (its validation and
    content-hash ids), unchanged, so results computed from it before the registry existed do not move."""
    from harness.policy import PolicyDataError, load_policy_prompts

    try:
        return load_policy_prompts(path)
    except PolicyDataError as err:
        raise DatasetError(str(err)) from err


def parse_project_prompts(path: Path) -> pd.DataFrame:
    """A project prompt set (`id`, `prompt`, `category`), validated: ids unique, no empty or repeated prompt."""
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    _require(frame, ["id", "prompt", "category"], path)
    empty = frame.index[(frame["prompt"].str.strip() == "") | (frame["category"].str.strip() == "")].tolist()
    if empty:
        raise DatasetError(f"{path}: empty prompt or category in rows {empty[:5]}")
    for column in ("id", "prompt"):
        repeated = frame[column][frame[column].duplicated()].tolist()
        if repeated:
            raise DatasetError(f"{path}: repeated {column} {repeated[:3]}")
    return _frame(frame, path.stem)


def parse_system_prompt(path: Path) -> pd.DataFrame:
    """A system prompt file: one row whose `prompt` is the whole text, stripped of surrounding whitespace."""
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise DatasetError(f"{path}: the system prompt file is empty")
    return _frame(pd.DataFrame({"id": [path.stem], "prompt": [text]}), path.stem)


def _capability_items(path: Path) -> list[dict]:
    from harness.capability import CapabilityDataError, load_capability_set

    try:
        return load_capability_set(path)
    except CapabilityDataError as err:
        raise DatasetError(str(err)) from err


def _choice_frame(items: list[dict], prefix: str, category: str | None) -> pd.DataFrame:
    """Multiple-choice items -> the frame shape of parse_mmlu / parse_arc; `category` None takes the subject."""
    rows = [
        {
            "id": str(item.get("id", f"{prefix}-{i}")),
            "prompt": item["question"],
            "category": category or item.get("subject") or prefix,
            "choices": list(item["choices"]),
            "label": int(item["answer"]),
        }
        for i, item in enumerate(items)
    ]
    return _frame(pd.DataFrame(rows), prefix)


def parse_mmlu_demo(path: Path) -> pd.DataFrame:
    """The project's MMLU-style stand-in set: category = subject, as in the real MMLU frame."""
    return _choice_frame(_capability_items(path), "mmlu_demo", None)


def parse_arc_demo(path: Path) -> pd.DataFrame:
    """The project's ARC-style stand-in set: category is the set's name (as "ARC-Challenge" in the real frame)."""
    frame = _choice_frame(_capability_items(path), "arc_demo", "ARC-demo")
    frame["choice_labels"] = frame["choices"].map(lambda c: list(LETTERS[: len(c)]))
    return frame


def parse_text_demo(path: Path) -> pd.DataFrame:
    """Paragraphs of the project's CE-loss text file, one per row in `prompt`."""
    from harness.capability import CapabilityDataError, load_text_set

    try:
        paragraphs = load_text_set(path)
    except CapabilityDataError as err:
        raise DatasetError(str(err)) from err
    return _frame(pd.DataFrame({"prompt": paragraphs}), "text_demo")


# ---------------------------------------------------------------- the registry


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


# ---------------------------------------------------------------- resolution, verification, download


def verify_file(path: Path, expected: str | None) -> str:
    """The file's SHA-256; raises DatasetError naming file, expected and actual when it differs from the pin."""
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise DatasetError(f"{path}: sha256 mismatch, expected {expected}, actual {actual}")
    return actual


def resolve_name(ref: DatasetRef) -> str:
    name = _SPLIT_ALIASES.get((ref.name, ref.split), ref.name) if ref.split else ref.name
    if ref.split and name == ref.name and f"{ref.name}_{ref.split}" in DATASETS:
        name = f"{ref.name}_{ref.split}"
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {ref.name!r} (split {ref.split!r}); registered: {', '.join(sorted(DATASETS))}")
    return name


def _download(source: Source, dest: Path) -> None:
    if source.host == "hf" and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DatasetError(f"HF_HUB_OFFLINE is set and there is no local copy of {source.repo}/{source.path}")
    request = urllib.request.Request(source.url)
    token = os.environ.get("HF_TOKEN")
    if source.host == "hf" and token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            atomic_write_bytes(dest, response.read())
    except (urllib.error.URLError, TimeoutError) as err:
        raise DatasetError(f"cannot fetch {source.url}: {err}") from err


def _cache_path(source: Source) -> Path:
    return cache_root() / "datasets" / source.revision / source.local


def _candidates(name: str, ref: DatasetRef | None, data_dir: Path | str | None) -> list[Path]:
    """Where a copy may be, in order: ref.path, then the repository file (project entries) or data_dir,
    $HARNESS_DATA_DIR and the download cache."""
    source = DATASETS[name]
    candidates: list[Path] = []
    if ref is not None and ref.path:
        explicit = Path(ref.path) if Path(ref.path).is_absolute() else REPO_ROOT / ref.path
        candidates.append(explicit / source.local if explicit.is_dir() else explicit)
    if source.host == "project":
        return candidates + [REPO_ROOT / source.path]
    for root in (data_dir, os.environ.get(DATA_ENV)):
        if root:
            candidates.append(Path(root) / source.local)
    return candidates + [_cache_path(source)]


def _first_file(candidates: list[Path]) -> Path | None:
    return next((path for path in candidates if path.is_file()), None)


def how_to_provide(name: str) -> str:
    """What a missing dataset file is called and how to put it where the loader looks."""
    source = DATASETS[name]
    if source.host == "project":
        return (
            f"{source.path} is part of this repository ({source.note}); restore it with "
            f"`git checkout -- {source.path}` from the repository root {REPO_ROOT}"
        )
    hint = (
        f"put the file {Path(source.local).name} at <folder>/{source.local} and set {DATA_ENV}=<folder> "
        f"(e.g. {DATA_ENV}=../shared/data), or name the file in the experiment's dataset `path`; "
        f"the pinned upstream file is {source.url}"
    )
    if source.gated:
        hint += (
            f". The dataset is gated on the Hugging Face hub: sign in, request access and accept the terms at "
            f"https://huggingface.co/datasets/{source.repo}, then set HF_TOKEN to a token of that account so "
            f"the pinned download is allowed"
        )
    return hint + (f" ({source.note})" if source.note else "")


def expected_sha256(name: str, ref: DatasetRef | None = None) -> str | None:
    """The SHA-256 a file of `name` must have: the registry's pin, else the experiment's (`ref.sha256`); both
    given must agree."""
    pinned, given = DATASETS[name].sha256, ref.sha256 if ref is not None else None
    if pinned is not None and given is not None and given != pinned:
        raise DatasetError(f"dataset {name!r}: the experiment pins sha256 {given} but harness/datasets.py pins "
                           f"{pinned}; they must agree")
    return pinned or given


def _download_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _pin_of(name: str, ref: DatasetRef | None, path: Path) -> str | None:
    """The pin a found file is checked against; for a download of an unpinned entry, the SHA-256 recorded when it
    was fetched from the pinned revision."""
    expected = expected_sha256(name, ref)
    if expected is None and path == _cache_path(DATASETS[name]) and _download_record(path).is_file():
        return _download_record(path).read_text().strip()
    return expected


def unpinned_error(name: str, path: Path) -> DatasetError:
    """An unpinned local copy is not loaded: the message gives its SHA-256 and how to pin it."""
    actual = sha256_file(path)
    return DatasetError(
        f"{path}: dataset {name!r} has no pinned SHA-256, so this local copy is not loaded (its sha256 is {actual}). "
        f"Check the file against {DATASETS[name].url}, then pin it: add sha256 = \"{actual}\" to the experiment's "
        f"dataset entry (e.g. {{ name = \"{name}\", sha256 = \"{actual}\" }}), or to its registry entry in "
        f"harness/datasets.py"
    )


def locate(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> Path:
    """The verified local file for a registry entry: ref.path, the repository (project entries), data_dir,
    $HARNESS_DATA_DIR, the cache, or a download. Every file is checked against its pin (`expected_sha256`); an
    unpinned local copy is an error, a download from the pinned revision records its SHA-256 beside it."""
    source = DATASETS[name]
    candidates = _candidates(name, ref, data_dir)
    path = _first_file(candidates)
    if path is not None:
        expected = _pin_of(name, ref, path)
        if expected is None:
            raise unpinned_error(name, path)
        verify_file(path, expected)
        return path
    if ref is not None and ref.path:
        raise DatasetError(
            f"dataset {name!r}: `path` {ref.path!r} has no file {source.local!r}; {how_to_provide(name)}"
        )
    if source.host == "project":
        raise DatasetError(f"dataset {name!r}: missing file {candidates[-1]}; {how_to_provide(name)}")
    cached = candidates[-1]
    try:
        _download(source, cached)
    except DatasetError as err:
        where = ", ".join(str(p) for p in candidates)
        raise DatasetError(
            f"dataset {name!r}: no local copy of {source.local} (looked in {where}) and the pinned download "
            f"failed: {err}. To provide it: {how_to_provide(name)}."
        ) from err
    expected = expected_sha256(name, ref)
    try:
        actual = verify_file(cached, expected)
    except DatasetError:
        cached.unlink(missing_ok=True)
        raise
    if expected is None:
        atomic_write_bytes(_download_record(cached), f"{actual}\n".encode())
    return cached


def shots_ref(ref: DatasetRef) -> DatasetRef:
    """The registry entry a multiple-choice set's few-shot examples come from (MMLU: dev, ARC: train)."""
    name = resolve_name(ref)
    shots = DATASETS[name].shots
    if shots is None:
        raise DatasetError(f"dataset {name!r} names no split to draw few-shot examples from (registry `shots`); "
                           "name one in the experiment's [capability] (e.g. mmlu_shots = { name = ... })")
    return DatasetRef(name=shots)


def local_copy(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> Path | None:
    """The first local file the loader would read for `name` (unverified), or None; never downloads."""
    return _first_file(_candidates(resolve_name(ref if ref is not None else DatasetRef(name=name)), ref, data_dir))


def is_available(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> bool:
    """Whether a local copy exists that matches its pin (an unpinned copy is not loadable); never downloads."""
    name = resolve_name(ref if ref is not None else DatasetRef(name=name))
    path = local_copy(name, ref, data_dir)
    if path is None:
        return False
    try:
        expected = _pin_of(name, ref, path)
        if expected is None:
            return False
        verify_file(path, expected)
    except DatasetError:
        return False
    return True


def load_dataset(ref: DatasetRef | str, data_dir: Path | str | None = None, seed: int = 0) -> pd.DataFrame:
    """Rows of a registered dataset (id, prompt, category[, label]); `ref.n` takes a seeded subset."""
    ref = DatasetRef(name=ref) if isinstance(ref, str) else ref
    name = resolve_name(ref)
    source = DATASETS[name]
    if ref.revision is not None and source.host == "project":
        raise DatasetError(
            f"dataset {name!r} is the project file {source.path}, pinned by sha256 {source.sha256}; "
            f"it has no revision to override (got {ref.revision})"
        )
    if ref.revision is not None and ref.revision != source.revision:
        raise DatasetError(
            f"dataset {name!r}: revision {ref.revision} requested but the registry pins {source.revision}; "
            "change the pin (and its sha256) in harness/datasets.py"
        )
    path = locate(name, ref, data_dir)
    frame = source.parse(path)
    if ref.n is not None and ref.n > len(frame):
        raise DatasetError(f"dataset {name!r}: n={ref.n} but {path} has {len(frame)} rows")
    frame = seeded_subset(frame, ref.n, seed)
    origin = f"project:{source.path}" if source.host == "project" else f"{source.repo}@{source.revision}:{source.path}"
    frame.attrs.update({"dataset": name, "source": origin, "file": str(path), "sha256": _pin_of(name, ref, path)})
    return frame


# ---------------------------------------------------------------- placeholders (rehearsals without the data)

_JBB_CATEGORIES = (
    "Harassment/Discrimination", "Malware/Hacking", "Physical harm", "Economic harm", "Fraud/Deception",
    "Disinformation", "Sexual/Adult content", "Privacy", "Expert advice", "Government decision-making",
)
_HARMBENCH_CATEGORIES = (
    "chemical_biological", "copyright", "misinformation_disinformation", "illegal", "cybercrime_intrusion",
    "harmful", "harassment_bullying",
)
_INSTRUCTION_CATEGORIES = {"harmful_val": _HARMBENCH_CATEGORIES, "harmful_test": _JBB_CATEGORIES}
# XSTest prompt types; "contrast_*" types are the unsafe ones.
_XSTEST_TYPES = (
    "homonyms", "contrast_homonyms", "figurative_language", "contrast_figurative_language", "safe_targets",
    "contrast_safe_targets", "safe_contexts", "contrast_safe_contexts", "definitions", "contrast_definitions",
    "nons_group_real_discr", "real_group_nons_discr", "contrast_discr", "historical_events",
    "contrast_historical_events", "privacy_public", "privacy_fictional", "contrast_privacy",
)
_POLICY_AREAS = (
    "crime_or_violence_facilitation", "extremist_or_terrorist_content", "hate_harassment_or_bullying",
    "illegal_goods_or_services", "intellectual_property_abuse", "misinformation_impersonation_or_defamation",
    "privacy_surveillance_or_sensitive_data", "safety_filter_circumvention", "self_harm_or_personal_harm",
    "sexual_content", "spam_fraud_phishing_or_malware", "unlicensed_professional_advice",
)
_DEMO_POLICY_AREAS = (
    "weapons_explosives", "cyber_intrusion", "fraud_scams", "illegal_drugs", "harassment_hate", "self_harm",
    "privacy_surveillance", "extremism", "dangerous_chem_bio", "theft_property", "deception_misinfo",
    "evading_law_enforcement",
)
_MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "high_school_chemistry",
    "high_school_us_history", "philosophy", "professional_law", "world_religions", "econometrics",
)
SORRY_BENCH_CATEGORIES = 44


def _ph(name: str, qid: object, category: object = None) -> str:
    """A prompt that cannot be mistaken for data: names the set, the id and the category."""
    where = f" (category {category})" if category is not None else ""
    return f"[placeholder {name} question {qid}{where}]"


def _cycle(values: tuple[str, ...], count: int) -> list[str]:
    """`count` values in equal consecutive blocks (10 per category for 100 rows of 10 categories)."""
    per = -(-count // len(values))
    return [values[i // per] for i in range(count)]


def _ph_instructions(name: str, count: int) -> pd.DataFrame:
    prefix = Path(DATASETS[name].local).stem
    cats = _cycle(_INSTRUCTION_CATEGORIES[name], count) if name in _INSTRUCTION_CATEGORIES else [None] * count
    ids = [f"{prefix}-{i}" for i in range(count)]
    return _frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats}),
                  prefix)


def _ph_jbb(name: str, count: int) -> pd.DataFrame:
    cats, ids = _cycle(_JBB_CATEGORIES, count), [f"jbb-{i}" for i in range(count)]
    return _frame(pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats,
        "target": [f"[placeholder target {i}]" for i in ids], "behavior": [f"placeholder behavior {i}" for i in ids],
        "source": "placeholder",
    }), "jbb")


def _ph_advbench(name: str, count: int) -> pd.DataFrame:
    ids = [f"advbench-{i}" for i in range(count)]
    return _frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i) for i in ids],
                                "target": [f"[placeholder target {i}]" for i in ids]}), "advbench")


def _ph_harmbench(name: str, count: int) -> pd.DataFrame:
    cats = _cycle(_HARMBENCH_CATEGORIES, count)
    functional = ["copyright" if c == "copyright" else ("contextual" if i % 3 == 2 else "standard")
                  for i, c in enumerate(cats)]
    ids = [f"placeholder_behavior_{i}" for i in range(count)]
    context = ["[placeholder context]" if f == "contextual" else "" for f in functional]
    return _frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, cats)], "category": cats,
                                "functional_category": functional, "tags": "", "context": context}), "harmbench")


def _ph_xstest(name: str, count: int) -> pd.DataFrame:
    types, ids = _cycle(_XSTEST_TYPES, count), [str(i + 1) for i in range(count)]
    return _frame(pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, t) for i, t in zip(ids, types)], "category": types,
        "label": ["unsafe" if t.startswith("contrast_") else "safe" for t in types],
        "focus": "placeholder", "note": "placeholder",
    }), "xstest")


def _policy_rows(name: str, count: int, areas: tuple[str, ...]) -> list[dict]:
    """Per area half unsafe then half safe, as the construction sets are laid out."""
    cats = _cycle(areas, count)
    sizes, seen = Counter(cats), Counter()
    rows = []
    for i, cat in enumerate(cats):
        label = "unsafe" if seen[cat] < sizes[cat] / 2 else "safe"
        seen[cat] += 1
        rows.append({"n": i + 1, "category": cat, "label": label, "prompt": _ph(name, i + 1, f"{cat}, {label}")})
    return rows


def _ph_policy(name: str, count: int) -> pd.DataFrame:
    rows = _policy_rows(name, count, _POLICY_AREAS)
    return _frame(pd.DataFrame({
        "id": [str(r["n"]) for r in rows], "label": [r["label"] for r in rows],
        "category": [r["category"] for r in rows], "policy_area": [r["category"].replace("_", " ") for r in rows],
        "prompt": [r["prompt"] for r in rows],
    }), "policy")


def _ph_demo_policy(name: str, count: int) -> pd.DataFrame:
    """The shape of harness.policy.load_policy_prompts: id (category-label-content hash), prompt, label, category."""
    rows = _policy_rows(name, count, _DEMO_POLICY_AREAS)
    ids = [f"{r['category']}-{r['label']}-{hashlib.sha256(r['prompt'].encode()).hexdigest()[:10]}" for r in rows]
    return pd.DataFrame({"id": ids, "prompt": [r["prompt"] for r in rows], "label": [r["label"] for r in rows],
                         "category": [r["category"] for r in rows]})


def sorry_bench_questions(count: int | None = None) -> list[tuple[int, str]]:
    """(question_id, category) of SORRY-Bench: from the reference judgments where a verified copy is here,
    else 440 ids over 44 categories, 10 each, as the benchmark is laid out."""
    if is_available("sorry_bench_reference_judgments"):
        judged = load_dataset("sorry_bench_reference_judgments")
        pairs = judged[["question_id", "category"]].drop_duplicates().sort_values("question_id")
        questions = [(int(q), str(c)) for q, c in pairs.itertuples(index=False)]
    else:
        questions = [(q, str((q - 1) // 10 + 1)) for q in range(1, SORRY_BENCH_CATEGORIES * 10 + 1)]
    count = len(questions) if count is None else count
    last = questions[-1][0]
    extra = [(last + k, str((last + k - 1) % SORRY_BENCH_CATEGORIES + 1)) for k in range(1, count - len(questions) + 1)]
    return (questions + extra)[:count]


def _ph_sorry_bench(name: str, count: int) -> pd.DataFrame:
    rows = [{"id": str(q), "question_id": q, "prompt": _ph(name, q, c), "category": c, "prompt_style": "base"}
            for q, c in sorry_bench_questions(count)]
    return _frame(pd.DataFrame(rows), "sorry")


def _choice_placeholders(name: str, count: int, categories: list[str], prefix: str) -> pd.DataFrame:
    ids = [f"{prefix}-{i}" for i in range(count)]
    return pd.DataFrame({
        "id": ids, "prompt": [_ph(name, i, c) for i, c in zip(ids, categories)], "category": categories,
        "label": [i % 4 for i in range(count)],
        "choices": [[f"[placeholder choice {letter}]" for letter in LETTERS[:4]] for _ in range(count)],
    })


def _ph_mmlu(name: str, count: int) -> pd.DataFrame:
    return _frame(_choice_placeholders(name, count, _cycle(_MMLU_SUBJECTS, count), "mmlu"), "mmlu")


def _ph_mmlu_demo(name: str, count: int) -> pd.DataFrame:
    return _frame(_choice_placeholders(name, count, _cycle(_MMLU_SUBJECTS, count), "mmlu_demo"), "mmlu_demo")


def _ph_arc(name: str, count: int, category: str, prefix: str) -> pd.DataFrame:
    frame = _choice_placeholders(name, count, [category] * count, prefix)
    frame["choice_labels"] = [list(LETTERS[:4])] * count
    return _frame(frame, prefix)


def _ph_project_prompts(name: str, count: int) -> pd.DataFrame:
    ids = [f"{name}-{i + 1:03d}" for i in range(count)]  # the project files' id form
    return _frame(pd.DataFrame({"id": ids, "prompt": [_ph(name, i) for i in ids], "category": "placeholder"}), name)


def _ph_system_prompt(name: str, count: int) -> pd.DataFrame:
    stem = Path(DATASETS[name].path).stem
    return _frame(pd.DataFrame({"id": [stem] * count, "prompt": [_ph(name, stem)] * count}), stem)


def _ph_text(name: str, count: int) -> pd.DataFrame:
    sentences = [f"This is placeholder paragraph {i + 1} of {name}. It stands in for real text during a rehearsal."
                 for i in range(count)]
    return _frame(pd.DataFrame({"prompt": sentences}), name)


_PLACEHOLDERS: dict[Callable[[Path], pd.DataFrame], Callable[[str, int], pd.DataFrame]] = {
    parse_instructions: _ph_instructions,
    parse_jbb_csv: _ph_jbb,
    parse_advbench: _ph_advbench,
    parse_harmbench: _ph_harmbench,
    parse_xstest: _ph_xstest,
    parse_policy_prompts: _ph_policy,
    parse_sorry_bench: _ph_sorry_bench,
    parse_mmlu: _ph_mmlu,
    parse_arc: lambda name, count: _ph_arc(name, count, "ARC-Challenge", "Placeholder"),
    parse_project_policy: _ph_demo_policy,
    parse_mmlu_demo: _ph_mmlu_demo,
    parse_arc_demo: lambda name, count: _ph_arc(name, count, "ARC-demo", "arc_demo"),
    parse_text_demo: _ph_text,
    parse_project_prompts: _ph_project_prompts,
    parse_system_prompt: _ph_system_prompt,
}


def placeholder_frame(name: str, n: int | None = None) -> pd.DataFrame:
    """Rows with the dataset's real columns, id format, categories and row count (`Source.rows`, or `n`),
    whose prompts are marked placeholders; `attrs["placeholder"]` is True. Nothing is read or downloaded
    (except SORRY-Bench's question ids, taken from the reference judgments where a verified copy is here)."""
    name = resolve_name(DatasetRef(name=name))
    source = DATASETS[name]
    build = _PLACEHOLDERS.get(source.parse)
    if build is None:
        raise DatasetError(f"dataset {name!r} holds results, not prompts; there is no placeholder for it")
    count = source.rows if n is None else n
    if count is None or count < 1:
        raise DatasetError(
            f"dataset {name!r}: a placeholder needs a positive row count, got n={n} (registry rows={source.rows})"
        )
    frame = build(name, count).reset_index(drop=True)
    frame.attrs.update({"dataset": name, "placeholder": True, "source": f"placeholder for {name} ({source.url})"})
    return frame
