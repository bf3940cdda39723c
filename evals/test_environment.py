"""harness.report.environment: hashes that change exactly when what they stand for changes."""

from __future__ import annotations

import subprocess

import pytest
import torch

from harness.config import DatasetRef
from harness.report.environment import dataset_record, git_state, state_dict_sha256, template_record


def test_weights_hash_sees_one_changed_value():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    before = state_dict_sha256(model)
    assert state_dict_sha256(model) == before
    with torch.no_grad():
        model[0].weight[1, 2] += 1e-3
    assert state_dict_sha256(model) != before


def test_weights_hash_sees_dtype_and_bf16_weights():
    model = torch.nn.Linear(4, 3)
    before = state_dict_sha256(model)
    assert state_dict_sha256(model.to(torch.bfloat16)) != before


def test_git_state_reports_a_dirty_tree_but_not_a_new_report(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "reports" / "r.json").write_text('{"new": 1}\n')
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True


def test_git_state_outside_a_checkout(tmp_path):
    state = git_state(tmp_path)
    assert state["commit"] is None and "not a git checkout" in state["note"]


def test_template_record_follows_the_pinned_date(shared_tokenizer):
    from harness.models.chat import ChatFormat, set_chat_format

    tok = shared_tokenizer("openai/gpt-oss-20b")
    set_chat_format(tok, ChatFormat(date="2024-06-01"))
    first = template_record(tok)
    set_chat_format(tok, ChatFormat(date="2025-01-01"))
    second = template_record(tok)
    assert first["template_sha256"] == second["template_sha256"]
    assert first["rendered_sha256"] != second["rendered_sha256"]
    assert first["post_instruction"].startswith("<|end|><|start|>assistant")


def test_dataset_record_hashes_the_file_read(tmp_path):
    from harness.run.pins import sha256_file

    rec = dataset_record(DatasetRef(name="text_demo"))
    assert rec["sha256"] == rec["pinned_sha256"] or rec["pinned_sha256"] is None
    assert len(rec["sha256"]) == 64
    path = tmp_path / "copy.jsonl"
    from harness.data.loading import local_copy

    path.write_bytes(local_copy("text_demo").read_bytes() + b"\n")
    moved = dataset_record(DatasetRef(name="text_demo", path=str(path)))
    assert moved["sha256"] == sha256_file(path) != rec["sha256"]


@pytest.fixture
def shared_tokenizer():
    from transformers import AutoTokenizer

    from harness.models.tokenizer_files import local_model_files

    def get(model_id: str):
        path = local_model_files(model_id)
        if path is None:
            pytest.skip(f"no offline files for {model_id} under $HARNESS_TOKENIZERS_DIR")
        return AutoTokenizer.from_pretrained(path)

    return get


def test_weights_hash_is_cached_by_its_files_and_recomputed_when_one_changes(tmp_path, monkeypatch):
    """The cached hash is the in-memory hash; the same files give it back without hashing; a file rewritten
    (size or mtime) makes it hash the weights in memory again."""
    import os
    from types import SimpleNamespace

    from harness.report.environment import cached_weights_sha256, weight_files

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("not read by the loader")
    files = weight_files(SimpleNamespace(gguf_file=None, path=str(folder), id=None, revision=None))
    assert [f.name for f in files] == ["config.json", "model.safetensors"]

    model = torch.nn.Linear(4, 3)
    first, reused = cached_weights_sha256(model, files, "float32")
    assert (first, reused) == (state_dict_sha256(model), False)
    with torch.no_grad():
        model.weight += 1.0  # what a reload of changed files would give
    assert cached_weights_sha256(model, files, "float32") == (first, True)  # same files: not re-hashed
    assert cached_weights_sha256(model, files, "bfloat16")[1] is False  # another dtype: hashed again

    (folder / "model.safetensors").write_bytes(b"weights v2")
    os.utime(folder / "model.safetensors", ns=(1, 1))
    again, reused = cached_weights_sha256(model, files, "float32")
    assert not reused and again == state_dict_sha256(model) != first


def test_weights_of_an_unnamed_source_are_not_cached():
    from types import SimpleNamespace

    from harness.report.environment import weight_files

    assert weight_files(SimpleNamespace(gguf_file=None, path=None, id="no-such/model", revision="0" * 40)) is None
