"""Data stage: pinned datasets (registry apart from loading), the construction set, and which prompts fit, select and
evaluate.

May import: config, run.
"""
