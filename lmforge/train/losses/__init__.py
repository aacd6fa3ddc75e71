"""Losses as pure functions of tensors: no models, no loops, no state.

lm          next-token cross-entropy (token sums, so accumulation is token-weighted), bits per byte
preference  DPO, IPO, SimPO, ORPO, KTO and Bradley-Terry (reward model) losses, sequence log-probabilities
"""

from lmforge.train.losses.lm import IGNORE_INDEX, bits_per_byte, token_cross_entropy

__all__ = ["IGNORE_INDEX", "bits_per_byte", "token_cross_entropy"]
