"""lmforge.serve (layer 5): an OpenAI-compatible HTTP API with continuous batching, and a web chat page.

A thin layer over `lmforge.infer`: requests are validated and tokenized here, then one scheduler
thread drives the `Engine`, batching the decode steps of every running request.
"""

from lmforge.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
