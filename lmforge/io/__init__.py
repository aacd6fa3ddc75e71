"""Layer 3: reading and writing model files (GGUF, Hugging Face folders, checkpoints)."""
