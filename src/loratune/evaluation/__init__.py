"""Evaluation: base vs LoRA, metrics, accuracy over training time, forgetting."""
