"""Pinned, SHA-256-verified, offline-capable benchmark loaders.

Every dataset is a registry entry: where it comes from (repository + commit/revision + path), the
SHA-256 of that file, where a local copy lives under $HARNESS_DATA_DIR, and a parser to a DataFrame
with columns `id`, `prompt`, `category` (and `label` where the source has one). A local copy is
preferred; without one the pinned upstream file is downloaded once into the harness cache. A file
that does not match its pin is never parsed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import warnings
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

ARDITI_REPO = "andyrdt/refusal_direction"
ARDITI_COMMIT = "9d852fae1a9121c78b29142de733cb1340770cc3"
POLICY_REPO = "MatthesF/refusal-ablation"
POLICY_COMMIT = "985cee4484e412626fe805310178051cfb76cb37"


class DatasetError(RuntimeError):
    """A dataset that cannot be used: unknown name, missing file, pin mismatch or bad format."""


@dataclass(frozen=True)
class Source:
    """One pinned file and how to read it. `host` is "github" or "hf" (a Hugging Face dataset repo)."""

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

    @property
    def url(self) -> str:
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


# ---------------------------------------------------------------- the registry


def _arditi(path: str, local: str, sha: str, parse: Callable[[Path], pd.DataFrame], rows: int) -> Source:
    return Source("github", ARDITI_REPO, ARDITI_COMMIT, path, local, sha, parse, rows)


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
        note="gated on the Hugging Face hub: accept the terms, set HF_TOKEN, or place question.jsonl locally",
    ),
    "mmlu": Source(
        "hf", "cais/mmlu", "c30699e8356da336a370243923dbaf21066bb9fe", "all/test-00000-of-00001.parquet",
        "mmlu/test-00000-of-00001.parquet", None, parse_mmlu, 14042,
    ),
    "arc_challenge": Source(
        "hf", "allenai/ai2_arc", "210d026faf9955653af8916fad021475a3f00453", "ARC-Challenge/test-00000-of-00001.parquet",
        "arc_challenge/test-00000-of-00001.parquet",
        "62f03257e737aed263f55c6abf87c7bb0028a44a6bdd2a26eb1279eb42c1d1e9", parse_arc, 1172,
        note="sha256 is the hub's LFS oid for this revision as recorded publicly; not yet checked against a download",
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


def locate(name: str, ref: DatasetRef | None = None, data_dir: Path | str | None = None) -> Path:
    """The verified local file for a registry entry: ref.path, data_dir, $HARNESS_DATA_DIR, the cache, or a download."""
    source = DATASETS[name]
    candidates: list[Path] = []
    if ref is not None and ref.path:
        explicit = Path(ref.path) if Path(ref.path).is_absolute() else REPO_ROOT / ref.path
        candidates.append(explicit / source.local if explicit.is_dir() else explicit)
    for root in (data_dir, os.environ.get(DATA_ENV)):
        if root:
            candidates.append(Path(root) / source.local)
    cached = cache_root() / "datasets" / source.revision / source.local
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            actual = verify_file(path, source.sha256)
            if source.sha256 is None:
                warnings.warn(f"{path}: no pinned sha256 for {name!r}; loaded unverified (sha256 {actual})", stacklevel=3)
            return path
    if ref is not None and ref.path:
        raise DatasetError(f"dataset {name!r}: `path` {ref.path!r} has no file {source.local!r}")
    try:
        _download(source, cached)
    except DatasetError as err:
        where = ", ".join(str(p) for p in candidates)
        hint = f" ({source.note})" if source.note else ""
        raise DatasetError(
            f"dataset {name!r}: no local copy (looked in {where}) and the pinned download failed: {err}. "
            f"Set {DATA_ENV} to a folder holding {source.local}{hint}."
        ) from err
    try:
        verify_file(cached, source.sha256)
    except DatasetError:
        cached.unlink(missing_ok=True)
        raise
    return cached


def load_dataset(ref: DatasetRef | str, data_dir: Path | str | None = None, seed: int = 0) -> pd.DataFrame:
    """Rows of a registered dataset (id, prompt, category[, label]); `ref.n` takes a seeded subset."""
    ref = DatasetRef(name=ref) if isinstance(ref, str) else ref
    name = resolve_name(ref)
    source = DATASETS[name]
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
    frame.attrs.update({"dataset": name, "source": f"{source.repo}@{source.revision}:{source.path}", "file": str(path)})
    return frame
