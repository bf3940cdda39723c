"""What every part of the experiment schema shares: strict models, the error, pin checks."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ExperimentError(ValueError):
    """An experiment file that cannot be used; the message names the file and field."""

CLAIM_ID = re.compile(r"^test_\w+(\[[^\]]+\])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_sha256(value: str | None) -> str | None:
    if value is not None and not HEX64.match(value):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {value!r}")
    return value


def check_revision(value: str | None) -> str | None:
    if value is not None and not HEX40.match(value):
        raise ValueError(f"revision must be a 40-hex commit, got {value!r}")
    return value
