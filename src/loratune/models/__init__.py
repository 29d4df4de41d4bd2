"""Models: the built-in catalog, download from PyPI, loading, LoRA, the precision policy."""
