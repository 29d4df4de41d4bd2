"""Training: check -> load -> fit -> record, and the parts the Trainer is built from."""
