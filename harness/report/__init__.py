"""Report stage: results.json, report.md, CSVs and plots, and the environment record of what ran.

May import every stage above it.
"""
