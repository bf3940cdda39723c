"""SHA-256 manifests: parsing, verification messages, vendor_root, and `python -m harness fetch-judge`."""

from __future__ import annotations

import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import harness.__main__ as cli
from harness.run.pins import (
    SORRY_BENCH_COMMIT,
    SORRY_BENCH_MANIFEST,
    SORRY_BENCH_NAME,
    PinError,
    read_manifest,
    sha256_file,
    vendor_root,
    verify,
)

FILES = {"LICENSE": b"license text\n", "a.py": b"print('a')\n", "data/x/prompts.jsonl": b'{"name": "p"}\n'}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def manifest_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest for FILES, installed as the CLI's SORRY-Bench manifest for the test."""
    path = tmp_path / "pins.sha256"
    lines = ["# test pins", ""] + [f"{_sha(data)}  ./{rel}" for rel, data in FILES.items()]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(cli, "SORRY_BENCH_MANIFEST", path)
    return path


def test_read_manifest_sha256sum_format(tmp_path: Path) -> None:
    path = tmp_path / "m.sha256"
    upper = _sha(b"b").upper()
    path.write_text(f"# comment\n\n{_sha(b'a')}  ./dir/a.txt\n{upper} *b.bin\n")
    assert read_manifest(path) == {"dir/a.txt": _sha(b"a"), "b.bin": upper.lower()}


@pytest.mark.parametrize(
    "line, fragment, line_number",
    [
        ("deadbeef  a.txt", "expected '<64-hex sha256>  <relative path>'", 2),
        (f"{'0' * 64}  ../escape.txt", "must be relative", 2),
        (f"{'0' * 64}  /etc/passwd", "must be relative", 2),
        (f"{'0' * 64}  a.txt\n{'1' * 64}  ./a.txt", "'a.txt' is pinned twice", 3),
    ],
)
def test_read_manifest_rejects_bad_lines(tmp_path: Path, line: str, fragment: str, line_number: int) -> None:
    path = tmp_path / "bad.sha256"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(PinError, match=fragment) as info:
        read_manifest(path)
    assert f"{path}:{line_number}:" in str(info.value)


def test_read_manifest_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(PinError, match="does not exist"):
        read_manifest(tmp_path / "nope.sha256")
    (tmp_path / "empty.sha256").write_text("# nothing\n")
    with pytest.raises(PinError, match="pins no files"):
        read_manifest(tmp_path / "empty.sha256")


def test_verify_passes_on_intact_files(source: Path, manifest_file: Path) -> None:
    verify(read_manifest(manifest_file), source)


def test_verify_names_every_tampered_and_missing_file(source: Path, manifest_file: Path) -> None:
    manifest = read_manifest(manifest_file)
    tampered = b"print('tampered')\n"
    (source / "a.py").write_bytes(tampered)
    (source / "data/x/prompts.jsonl").unlink()
    with pytest.raises(PinError) as info:
        verify(manifest, source)
    message = str(info.value)
    assert "2 of 3 pinned files" in message and str(source) in message
    assert f"a.py: sha256 mismatch, expected {_sha(FILES['a.py'])}, actual {_sha(tampered)}" in message
    assert f"data/x/prompts.jsonl: missing (expected sha256 {_sha(FILES['data/x/prompts.jsonl'])})" in message
    assert "LICENSE" not in message


def test_vendor_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HARNESS_VENDOR_DIR", str(tmp_path))
    assert vendor_root() == tmp_path
    monkeypatch.delenv("HARNESS_VENDOR_DIR")
    assert vendor_root() == Path(cli.__file__).resolve().parent.parent / "vendor"


def test_committed_manifest_names_upstream_commit() -> None:
    header = SORRY_BENCH_MANIFEST.read_text().split("\n", 3)
    assert any(SORRY_BENCH_COMMIT in line for line in header if line.startswith("#"))
    pins = read_manifest(SORRY_BENCH_MANIFEST)
    assert {"LICENSE", "gen_judgment_safety.py", "data/sorry_bench/judge_prompts.jsonl"} <= set(pins)


def test_committed_manifest_equals_upstream_sha256sums() -> None:
    upstream = vendor_root() / SORRY_BENCH_NAME / "SHA256SUMS"
    if not upstream.is_file():
        pytest.skip(f"{upstream} is absent (set HARNESS_VENDOR_DIR to the shared vendor copy)")
    assert read_manifest(SORRY_BENCH_MANIFEST) == read_manifest(upstream)


def test_fetch_judge_from_local_copy(source: Path, manifest_file: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "vendor" / "judge"
    assert cli.main(["fetch-judge", "--from", str(source), "--dest", str(dest)]) == 0
    assert "fetched 3 pinned files" in capsys.readouterr().out
    assert {rel: (dest / rel).read_bytes() for rel in FILES} == FILES
    assert cli.main(["fetch-judge", "--from", str(source), "--dest", str(dest)]) == 0
    assert "already present and verified" in capsys.readouterr().out


def test_fetch_judge_refuses_tampered_source(source: Path, manifest_file: Path, tmp_path: Path, capsys) -> None:
    changed = b"changed\n"
    (source / "LICENSE").write_bytes(changed)
    dest = tmp_path / "vendor" / "judge"
    assert cli.main(["fetch-judge", "--from", str(source), "--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert f"LICENSE: sha256 mismatch, expected {_sha(FILES['LICENSE'])}, actual {_sha(changed)}" in err
    assert not any(p.is_file() for p in dest.rglob("*")), "unverified files must not reach --dest"
    assert [p.name for p in dest.parent.iterdir()] in ([], ["judge"]), "staging directory left behind"


def test_fetch_judge_names_file_missing_from_source(source: Path, manifest_file: Path, tmp_path: Path, capsys) -> None:
    (source / "a.py").unlink()
    assert cli.main(["fetch-judge", "--from", str(source), "--dest", str(tmp_path / "d")]) == 1
    assert "pinned file 'a.py' not found" in capsys.readouterr().err


def test_fetch_judge_downloads_pinned_commit(
    source: Path, manifest_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        prefix = f"https://raw.githubusercontent.com/SORRY-Bench/sorry-bench/{SORRY_BENCH_COMMIT}/"
        assert url.startswith(prefix) and timeout > 0
        return io.BytesIO((source / url.removeprefix(prefix)).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "dest"
    assert cli.main(["fetch-judge", "--dest", str(dest)]) == 0
    assert sorted(u.rsplit(f"{SORRY_BENCH_COMMIT}/", 1)[1] for u in urls) == sorted(FILES)
    verify(read_manifest(manifest_file), dest)


def test_fetch_judge_offline_error(
    manifest_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def offline(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert cli.main(["fetch-judge", "--dest", str(tmp_path / "dest")]) == 1
    err = capsys.readouterr().err
    assert "cannot download https://raw.githubusercontent.com/" in err and "offline?" in err and "--from DIR" in err


def test_fetch_judge_real_files(tmp_path: Path, capsys) -> None:
    """The committed manifest against the real evaluator files, when a copy is available."""
    real = vendor_root() / SORRY_BENCH_NAME
    pins = read_manifest(SORRY_BENCH_MANIFEST)
    if not all((real / rel).is_file() for rel in pins):
        pytest.skip(f"{real} lacks the evaluator files (set HARNESS_VENDOR_DIR or run fetch-judge)")
    copy = tmp_path / "copy"
    shutil.copytree(real, copy)
    dest = tmp_path / "dest"
    assert cli.main(["fetch-judge", "--from", str(copy), "--dest", str(dest)]) == 0
    assert all(sha256_file(dest / rel) == sha for rel, sha in pins.items())
    target = copy / "gen_judgment_safety.py"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes() + b"\n# tampered\n")
    assert cli.main(["fetch-judge", "--from", str(copy), "--dest", str(tmp_path / "dest2")]) == 1
    assert "gen_judgment_safety.py: sha256 mismatch" in capsys.readouterr().err
