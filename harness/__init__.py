"""refusal-harness: fit, remove and measure the refusal direction of chat language models.

The library is grouped by stage, in the order data flows (ARCHITECTURE.md):
config, run -> data -> models -> steering -> generation -> judges, measures -> stats -> report -> tools.
A module imports only from its own package and the packages before it (evals/test_layout.py checks).
"""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout: experiments/, data/ (the project's own datasets), vendor/, reports/."""
