"""Layer 0: typed configs, device and dtype helpers, atomic files, the progress display, plotting
without pyplot. Imports nothing internal."""
