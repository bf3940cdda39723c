"""What every part of the experiment schema shares: strict models, the error, pin checks."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

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


Revision = Annotated[str | None, AfterValidator(check_revision)]
"""A pinned commit (40 lowercase hex digits), or None."""
Sha256 = Annotated[str | None, AfterValidator(check_sha256)]
"""A file's SHA-256 (64 lowercase hex digits), or None."""
