"""Layer 0: typed configs, device and dtype helpers, errors. Imports nothing internal."""
