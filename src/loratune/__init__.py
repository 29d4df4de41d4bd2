"""loratune: adapt a language model to a domain with LoRA, and prove with numbers that it is better."""

__version__ = "0.1.0"
