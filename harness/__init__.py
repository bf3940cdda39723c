"""refusal-harness: fit, remove and measure the refusal direction of chat language models."""

__version__ = "0.1.0"
