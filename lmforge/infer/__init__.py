"""Layer 4: inference engine (prefill, KV-cache decode, sampling, stop rules, batching)."""

from lmforge.infer.engine import Completion, Engine, Sequence, generate
from lmforge.infer.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams", "Sequence", "generate"]
