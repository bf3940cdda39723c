"""Run infrastructure: resumable stage caches and SHA-256 pins of third-party files.

Imports nothing else from harness.
"""
