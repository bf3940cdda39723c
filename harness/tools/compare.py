"""Compare two runs (`python -m harness compare RUN_A RUN_B`): what differs in their environment record, each
claim's figures side by side, each claim's verdict, and per prompt, which judgments flipped between the runs with
an exact McNemar test on the flips, so a reviewer can tell a real change in refusal from noise before accepting a
judge or model revision with --snapshot-update.

Pure functions return data (`load_run`, `diff_env`, `diff_claims`, `flip_table`, `compare_runs`);
`format_comparison` turns it into text. Only figures, prompt ids and scores are read and shown: a run directory
holds no completion to a harmful prompt, and nothing here prints a completion.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.report.write import JUDGMENTS_COLUMNS, JUDGMENTS_CSV, figures_match
from harness.stats.proportions import mcnemar_exact

RESULTS = "results.json"
DIRECTION_RECORD = "direction.json"  # the run's direction: layer, position, how chosen, unit vector
MAX_IDS_SHOWN = 10  # flipped prompt ids listed per direction; the counts are always complete
MAX_VALUE_CHARS = 80


class CompareError(ValueError):
    """A run cannot be compared (no such directory, no or unreadable results.json); the message is one line."""


class _Absent:
    """A key, claim or outcome one run does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()


@dataclass(frozen=True)
class Run:
    path: Path
    results: dict
    judgments: list[dict] | None  # rows of judgments.csv (score int | None); None when the run wrote none
    direction: dict | None = None  # direction.json; None when the run wrote none


def direction_record(layer: int, pos: int, how: str, unit: Any) -> dict[str, Any]:
    """What a run writes as direction.json (beside results.json), so `compare` can tell whether two runs ablated
    the same direction: a `--limit` run refits it on its subset, and a judgment flip then mixes that change
    with the one under review. `unit`: [d_model], 8 significant digits (a cosine to ~1e-8)."""
    values = [float(f"{float(v):.8g}") for v in unit.detach().float().cpu().reshape(-1).tolist()]
    return {"layer": int(layer), "pos": int(pos), "how": how, "unit": values}


def _read_direction(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompareError(f"{path}: unreadable ({err})") from err
    missing = {"layer", "pos", "unit"} - set(record if isinstance(record, dict) else ())
    if missing:
        raise CompareError(f"{path}: missing key(s) {', '.join(sorted(missing))}")
    return record


def load_run(path: str | Path) -> Run:
    """A run directory (or its results.json): its results and, where present, its per-prompt judgments."""
    path = Path(path)
    if path.name == RESULTS and path.is_file():
        path = path.parent
    if not path.exists():
        raise CompareError(f"{path}: no such directory")
    if not path.is_dir():
        raise CompareError(f"{path}: not a directory (give a run's results directory, e.g. reports/demo)")
    results_path = path / RESULTS
    if not results_path.is_file():
        raise CompareError(f"{path}: no {RESULTS} here (not a run's results directory, e.g. reports/demo)")
    try:
        results = json.loads(results_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompareError(f"{results_path}: unreadable ({err})") from err
    if not isinstance(results, dict):
        raise CompareError(f"{results_path}: not a JSON object")
    return Run(path, results, _read_judgments(path / JUDGMENTS_CSV), _read_direction(path / DIRECTION_RECORD))


def _read_judgments(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(JUDGMENTS_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise CompareError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        return [{**row, "score": _score(row["score"], path)} for row in reader]


def _score(text: str, path: Path) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CompareError(f"{path}: score {text!r} is not a number") from None
    return int(value) if value.is_integer() else value


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as {dotted.path[i]: leaf}; an empty dict or list is a leaf of its own."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj:
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: obj}


def same(a: Any, b: Any) -> bool:
    """Equal leaves; NaN equals NaN (a rehearsal's rates), and True is not 1."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@dataclass(frozen=True)
class KeyDiff:
    key: str
    a: Any  # ABSENT where run A lacks the key
    b: Any


def diff_mapping(a: Any, b: Any) -> list[KeyDiff]:
    """Every flattened key whose value differs or that only one side has, in sorted order."""
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [KeyDiff(k, fa.get(k, ABSENT), fb.get(k, ABSENT)) for k in keys
            if k not in fa or k not in fb or not same(fa[k], fb[k])]


@dataclass(frozen=True)
class EnvDiff:
    recorded: tuple[bool, bool]  # whether each run's results.json has an "environment" record
    diffs: list[KeyDiff]
    n_keys: int  # keys compared, both runs together


def diff_env(a: dict, b: dict) -> EnvDiff:
    """The environment records (versions, commit, hashes, seed, limit, rehearsal mode) of two results.json."""
    recorded = (bool(a.get("environment")), bool(b.get("environment")))
    if not all(recorded):
        return EnvDiff(recorded, [], 0)
    ea, eb = a["environment"], b["environment"]
    return EnvDiff(recorded, diff_mapping(ea, eb), len(set(flatten(ea)) | set(flatten(eb))))


@dataclass(frozen=True)
class FigureRow:
    figure: str
    a: Any
    b: Any
    change: str  # "" same, "*" changed, "~" changed within the snapshot tolerance


@dataclass(frozen=True)
class ClaimDiff:
    name: str
    outcome_a: Any  # str, ABSENT (the run has outcomes but not this claim) or None (the run records no outcomes)
    outcome_b: Any
    rows: list[FigureRow]

    @property
    def verdict_differs(self) -> bool:
        known = self.outcome_a is not None and self.outcome_b is not None
        return known and not same(self.outcome_a, self.outcome_b)

    @property
    def figures_differ(self) -> bool:
        return any(r.change for r in self.rows)


def _change(key: str, a: Any, b: Any) -> str:
    if a is not ABSENT and b is not ABSENT and same(a, b):
        return ""
    leaf = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if a is not ABSENT and b is not ABSENT and figures_match(b, a, leaf):
        return "~"
    return "*"


def diff_claims(a: dict, b: dict) -> list[ClaimDiff]:
    """Every claim of either run (A's order, then B's new ones): outcomes and flattened figures side by side."""
    ca, cb = a.get("claims", {}), b.get("claims", {})
    oa, ob = a.get("outcomes"), b.get("outcomes")
    out = []
    for name in dict.fromkeys([*ca, *(oa or {}), *cb, *(ob or {})]):
        fa = flatten(ca[name]) if name in ca else {}
        fb = flatten(cb[name]) if name in cb else {}
        keys = [*fa, *(k for k in fb if k not in fa)]
        rows = [FigureRow(k, fa.get(k, ABSENT), fb.get(k, ABSENT), _change(k, fa.get(k, ABSENT), fb.get(k, ABSENT)))
                for k in keys if k]
        out.append(ClaimDiff(name, _outcome_of(name, ca, oa), _outcome_of(name, cb, ob), rows))
    return out


def _outcome_of(name: str, claims: dict, outcomes: dict | None) -> Any:
    """The claim's recorded outcome; ABSENT where the run has no such claim; None where the run records no
    outcomes (results.json from before they were recorded)."""
    if outcomes is not None:
        return outcomes.get(name, ABSENT)
    return None if name in claims else ABSENT


@dataclass(frozen=True)
class Flips:
    """Per-prompt changes between run A and run B for one (condition, prompt set, judge)."""

    condition: str
    set: str
    judge: str
    n: int  # prompts judged (0 or 1) in both runs
    refused_to_complied: int  # A refused, B complied
    complied_to_refused: int  # A complied, B refused
    mcnemar_p: float  # two-sided exact, harness.stats.proportions.mcnemar_exact
    one_run_only: int  # prompt ids present in one run only (a different --limit subset, say)
    unjudged: int  # prompts in both runs without a 0/1 score in at least one
    ids_refused_to_complied: list[str] = field(default_factory=list)
    ids_complied_to_refused: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FlipTable:
    recorded: tuple[bool, bool]  # whether each run has per-prompt judgments (judgments.csv)
    groups: list[Flips]
    only_a: list[tuple[str, str, str]]  # (condition, set, judge) judged in one run only
    only_b: list[tuple[str, str, str]]


def _by_group(rows: list[dict]) -> dict[tuple[str, str, str], dict[tuple[str, int], Any]]:
    """(condition, set, judge) -> {(prompt id, occurrence): score}; a repeated id pairs by occurrence."""
    groups: dict[tuple[str, str, str], dict[tuple[str, int], Any]] = {}
    for row in rows:
        g = groups.setdefault((row["condition"], row["set"], row["judge"]), {})
        k = 0
        while (row["id"], k) in g:
            k += 1
        g[row["id"], k] = row["score"]
    return groups


def _pid(key: tuple[str, int]) -> str:
    return key[0] if key[1] == 0 else f"{key[0]}#{key[1] + 1}"


def flip_table(a: list[dict] | None, b: list[dict] | None) -> FlipTable:
    """Flips on the prompts (by dataset id) both runs judged, per (condition, prompt set, judge)."""
    recorded = (a is not None, b is not None)
    if not all(recorded):
        return FlipTable(recorded, [], [], [])
    ga, gb = _by_group(a), _by_group(b)
    groups = []
    for name in sorted(set(ga) & set(gb)):
        sa, sb = ga[name], gb[name]
        shared = [k for k in sa if k in sb]
        judged = [k for k in shared if sa[k] in (0, 1) and sb[k] in (0, 1)]
        r2c = [_pid(k) for k in judged if sa[k] == 0 and sb[k] == 1]
        c2r = [_pid(k) for k in judged if sa[k] == 1 and sb[k] == 0]
        groups.append(Flips(*name, n=len(judged), refused_to_complied=len(r2c), complied_to_refused=len(c2r),
                            mcnemar_p=mcnemar_exact(len(r2c), len(c2r)),
                            one_run_only=len(set(sa) ^ set(sb)), unjudged=len(shared) - len(judged),
                            ids_refused_to_complied=r2c, ids_complied_to_refused=c2r))
    return FlipTable(recorded, groups, sorted(set(ga) - set(gb)), sorted(set(gb) - set(ga)))


@dataclass(frozen=True)
class DirectionDiff:
    recorded: tuple[bool, bool]  # whether each run wrote direction.json
    layers: tuple[int | None, int | None]
    positions: tuple[int | None, int | None]
    cosine: float | None  # of the two unit vectors; None unless both are recorded with the same width

    @property
    def changed(self) -> bool:
        if not all(self.recorded):
            return False
        return (self.layers[0] != self.layers[1] or self.positions[0] != self.positions[1]
                or (self.cosine is not None and self.cosine < SAME_DIRECTION_COSINE))


SAME_DIRECTION_COSINE = 1 - 1e-6  # float rounding of one refit on the same prompts, not a new direction


def diff_direction(a: dict | None, b: dict | None) -> DirectionDiff:
    recorded = (a is not None, b is not None)
    layers = (a["layer"] if a else None, b["layer"] if b else None)
    positions = (a["pos"] if a else None, b["pos"] if b else None)
    cosine = None
    if a and b and len(a["unit"]) == len(b["unit"]):
        dot = sum(x * y for x, y in zip(a["unit"], b["unit"]))
        norms = math.sqrt(sum(x * x for x in a["unit"]) * sum(y * y for y in b["unit"]))
        cosine = dot / norms if norms else None
    return DirectionDiff(recorded, layers, positions, cosine)


@dataclass(frozen=True)
class Comparison:
    a: Path
    b: Path
    env: EnvDiff
    meta: list[KeyDiff]
    claims: list[ClaimDiff]
    flips: FlipTable
    outcomes_recorded: tuple[bool, bool]
    direction: DirectionDiff = field(default_factory=lambda: diff_direction(None, None))

    @property
    def verdicts_differ(self) -> list[str]:
        return [c.name for c in self.claims if c.verdict_differs]

    @property
    def exit_code(self) -> int:
        """1 when some claim's verdict (passed, failed, known failure, rehearsed, ...) differs, else 0."""
        return 1 if self.verdicts_differ else 0


def compare_runs(a: Run, b: Run) -> Comparison:
    ra, rb = a.results, b.results
    return Comparison(
        a.path, b.path, diff_env(ra, rb), diff_mapping(ra.get("meta", {}), rb.get("meta", {})),
        diff_claims(ra, rb), flip_table(a.judgments, b.judgments), ("outcomes" in ra, "outcomes" in rb),
        diff_direction(a.direction, b.direction),
    )
