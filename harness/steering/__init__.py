"""Activations -> direction -> intervention: capture, diff-in-means and INLP, selection, reference filtering, hook
interventions, weight orthogonalization.

May import: config, run, data, models.
"""
