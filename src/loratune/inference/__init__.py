"""Inference: the decode engine shared by evaluation, chat and serving."""
