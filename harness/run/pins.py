"""SHA-256 pins of third-party files (sha256sum-format manifests).

Third-party files (the official SORRY-Bench evaluator) are fetched or read from a local copy, never
committed; only their manifest is. Anything that runs them verifies them first, so a changed upstream
file or a stale local copy fails loudly instead of silently changing the judge.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

from harness import REPO_ROOT

VENDOR_ENV = "HARNESS_VENDOR_DIR"
SORRY_BENCH_NAME = "sorry_bench_official"
SORRY_BENCH_MANIFEST = REPO_ROOT / "vendor" / f"{SORRY_BENCH_NAME}.sha256"
SORRY_BENCH_REPO = "SORRY-Bench/sorry-bench"
SORRY_BENCH_COMMIT = "7da10addffb6790cfeb75281eaffb5a176861653"

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class PinError(RuntimeError):
    """A pinned file is missing, differs from its pin, or a manifest is malformed; the message names each file."""


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(raw: str, where: str) -> str:
    """Normalise './a/b' to 'a/b'; reject paths that could leave the root."""
    path = PurePosixPath(raw)
    if path.is_absolute() or ".." in path.parts or str(path) in ("", "."):
        raise PinError(f"{where}: path {raw!r} must be relative and stay inside the root")
    return str(path)


def read_manifest(path: Path | str) -> dict[str, str]:
    """{relative path: lowercase sha256} from `<sha256>  <path>` lines; blank lines and # comments skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PinError(f"manifest {path} does not exist") from None
    manifest: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path}:{number}"
        match = _LINE.match(stripped)
        if match is None:
            raise PinError(f"{where}: expected '<64-hex sha256>  <relative path>', got {stripped!r}")
        rel = _relative(match.group(2), where)
        if rel in manifest:
            raise PinError(f"{where}: {rel!r} is pinned twice")
        manifest[rel] = match.group(1).lower()
    if not manifest:
        raise PinError(f"manifest {path} pins no files")
    return manifest


def verify(manifest: dict[str, str], root: Path | str) -> None:
    """Check every pinned file under `root`; one PinError lists every missing or mismatched file."""
    root = Path(root)
    problems: list[str] = []
    for rel, expected in sorted(manifest.items()):
        target = root / rel
        if not target.is_file():
            problems.append(f"  {rel}: missing (expected sha256 {expected})")
            continue
        actual = sha256_file(target)
        if actual != expected.lower():
            problems.append(f"  {rel}: sha256 mismatch, expected {expected}, actual {actual}")
    if problems:
        head = f"{len(problems)} of {len(manifest)} pinned files under {root} failed verification:"
        raise PinError("\n".join([head, *problems]))


def vendor_root() -> Path:
    """Where third-party files live: $HARNESS_VENDOR_DIR, else <repo>/vendor."""
    env = os.environ.get(VENDOR_ENV)
    return Path(env) if env else REPO_ROOT / "vendor"


def sorry_bench_dir() -> Path:
    """The verified official SORRY-Bench evaluator directory; raises PinError if absent or changed."""
    root = vendor_root() / SORRY_BENCH_NAME
    verify(read_manifest(SORRY_BENCH_MANIFEST), root)
    return root
