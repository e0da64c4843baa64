"""The decoder: its config and presets, one forward, attention and the KV cache, checkpoint I/O and Hugging Face conversion."""
