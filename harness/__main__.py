"""Command line: `python -m harness <subcommand>` (also installed as `refusal-harness`)."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import REPO_ROOT
from harness.run.pins import (
    SORRY_BENCH_COMMIT,
    SORRY_BENCH_MANIFEST,
    SORRY_BENCH_NAME,
    SORRY_BENCH_REPO,
    PinError,
    read_manifest,
    vendor_root,
    verify,
)

RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
DOWNLOAD_TIMEOUT_S = 30.0


class FetchError(RuntimeError):
    """A pinned file could not be obtained; the message names the file and the source."""


def _download(rel: str, target: Path) -> None:
    url = RAW_URL.format(repo=SORRY_BENCH_REPO, commit=SORRY_BENCH_COMMIT, path=rel)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            target.write_bytes(response.read())
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise FetchError(
            f"cannot download {url} ({reason}); offline? use --from DIR with a local copy of the files"
        ) from err


def _copier(source: Path) -> Callable[[str, Path], None]:
    def copy(rel: str, target: Path) -> None:
        origin = source / rel
        if not origin.is_file():
            raise FetchError(f"{origin}: pinned file {rel!r} not found in --from {source}")
        shutil.copyfile(origin, target)

    return copy


def fetch_judge(dest: Path, source: Path | None = None, manifest_path: Path | None = None) -> str:
    """Fill `dest` with the pinned SORRY-Bench evaluator files, from upstream or a local `source` dir.

    Files are gathered and verified in a staging directory first, so `dest` never holds an unverified file.
    Returns a one-line account of what was done."""
    manifest = read_manifest(manifest_path or SORRY_BENCH_MANIFEST)
    try:
        verify(manifest, dest)
        return f"{len(manifest)} pinned files already present and verified in {dest}"
    except PinError:
        pass
    get = _copier(source) if source is not None else _download
    origin = str(source) if source is not None else f"github.com/{SORRY_BENCH_REPO}@{SORRY_BENCH_COMMIT[:12]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-staging-") as staging:
        stage = Path(staging)
        for rel in manifest:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            get(rel, stage / rel)
        verify(manifest, stage)
        for rel in manifest:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).replace(dest / rel)
    verify(manifest, dest)
    return f"fetched {len(manifest)} pinned files from {origin} into {dest}; all SHA-256 verified"


def _cmd_fetch_judge(args: argparse.Namespace) -> int:
    source = Path(args.source) if args.source else None
    dest = Path(args.dest) if args.dest else vendor_root() / SORRY_BENCH_NAME
    print(fetch_judge(dest, source))
    return 0


def _cmd_judge(args: argparse.Namespace) -> int:
    from harness.judges.sorry_bench import judge_exchange_dir

    written = judge_exchange_dir(Path(args.dir), backend=args.backend)
    print(f"scored {len(written)} answer file(s) in {args.dir}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.tools.compare import CompareError, compare_runs, load_run
    from harness.tools.compare_text import format_comparison

    try:
        runs = [load_run(path) for path in (args.run_a, args.run_b)]
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    comparison = compare_runs(*runs)
    print(format_comparison(comparison, changed_only=args.changed), end="")
    return comparison.exit_code




EXPORT_RUN = REPO_ROOT / "evals" / "export_run.py"


def _cmd_export(args: argparse.Namespace) -> int:
    """Runs evals/export_run.py, one test that asks for the `exported` fixture and asserts no claim: the direction
    and the edited model come from the same cached fixtures as the claims (after a claim run, a cache read), and
    no claim runs, so nothing is snapshotted or reported."""
    import subprocess

    from harness.tools.export import MANIFEST_FILE, read_manifest

    out = Path(args.out).resolve()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or export", "--experiment", args.experiment,
           "--export", str(out), "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(EXPORT_RUN)]
    for flag in ("limit", "rehearse", "device"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag}", str(getattr(args, flag))]
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    if proc.returncode != 0 or not (out / MANIFEST_FILE).is_file():
        print(f"error: the export run failed (exit {proc.returncode}); see its output above", file=sys.stderr)
        return proc.returncode or 1
    manifest = read_manifest(out)
    print(f"exported to {out}: {', '.join(manifest['files'])}")
    print("lm-evaluation-harness (pip install 'lm-eval[hf]'; TASK is any lm-eval task):")
    for name, command in manifest["lm_eval"].items():
        print(f"  {name}: {command}")
    return 0


def _cmd_demo_recipes(args: argparse.Namespace) -> int:
    """The demo's recipe choice, reproducible: every candidate built and scored on validation prompts only."""
    import csv

    from harness.config import load_experiment
    from harness.tools.demo_recipes import FIRST_RULE, RECIPE_RULE, choose_recipe, evaluate_recipes, separation

    rows = evaluate_recipes(load_experiment(args.experiment))
    chosen = choose_recipe(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) + ["separation", "chosen"])
        writer.writeheader()
        writer.writerows({**r, "separation": round(separation(r), 4),
                          "chosen": chosen is not None and r["recipe"] == chosen["recipe"]} for r in rows)
    print(f"rule: {RECIPE_RULE}\nfirst rule: {FIRST_RULE}")
    for r in rows:
        print(f"{r['recipe']} seed {r['seed']}: unsafe {r['unsafe_refusal']:.1%}, "
              f"safe {r['safe_refusal']:.1%} refused, cost {r['cost']}")
    if chosen:
        print(f"chosen: {chosen['recipe']} (mean separation {chosen['separation']:.3f}, cost {chosen['cost']}; "
              f"table: {out})")
    else:
        print(f"no recipe was scored on every seed (table: {out})")
    return 0 if chosen else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; add a subcommand with `sub.add_parser(...).set_defaults(func=...)`."""
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fetch = sub.add_parser("fetch-judge", help="fetch and SHA-256-verify the official SORRY-Bench evaluator files")
    fetch.add_argument("--from", dest="source", metavar="DIR", help="copy from a local directory, not from upstream")
    fetch.add_argument("--dest", metavar="DIR", help=f"target (default: <$HARNESS_VENDOR_DIR or vendor>/{SORRY_BENCH_NAME})")
    fetch.set_defaults(func=_cmd_fetch_judge)
    judge = sub.add_parser("judge", help="score exported answers with the official SORRY-Bench judge (tox -e judge)")
    judge.add_argument("--dir", required=True, help="the exchange directory a claims run named")
    judge.add_argument("--backend", choices=["vllm", "transformers"], default="vllm")
    judge.set_defaults(func=_cmd_judge)
    compare = sub.add_parser("compare", help="compare two runs: environment, figures, verdicts, per-prompt flips "
                             "(exit 1 when a claim's verdict differs)")
    compare.add_argument("run_a", metavar="RUN_A", help="a run's results directory, e.g. reports/demo")
    compare.add_argument("run_b", metavar="RUN_B", help="the run to compare it with, e.g. reports/demo-limit40")
    compare.add_argument("--changed", action="store_true", help="show only claims and figures that changed")
    compare.set_defaults(func=_cmd_compare)
    export = sub.add_parser("export", help="write the direction (safetensors + JSON), lm-eval steer files and the "
                            "weight-edited checkpoint of an experiment")
    export.add_argument("--experiment", required=True, help="experiment name or TOML path")
    export.add_argument("out", metavar="OUT", help="output directory")
    export.add_argument("--limit", type=int, help="the --limit of the run whose direction to export")
    export.add_argument("--rehearse", choices=["tiny", "full"], help="export a rehearsal's (random-weight) direction")
    export.add_argument("--device", help="override the experiment's device")
    export.set_defaults(func=_cmd_export)
    recipes = sub.add_parser("demo-recipes", help="build each candidate demo recipe and choose one on validation "
                             "prompts only (harness.tools.demo_recipes.RECIPE_RULE)")
    recipes.add_argument("--experiment", default="demo")
    recipes.add_argument("--out", default=str(REPO_ROOT / "reports" / "demo" / "recipes.csv"))
    recipes.set_defaults(func=_cmd_demo_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (PinError, FetchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
