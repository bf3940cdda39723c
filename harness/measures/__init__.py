"""Measures of a model besides judgments: capability (MMLU, ARC, CE loss) and the coherence of its completions.

May import: config, run, data, models, steering, generation.
"""
