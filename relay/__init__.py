"""relay: a self-hosted, single-process LLM API gateway."""

__version__ = "0.1.0"
