"""Inference attacks: what a model reveals about its training records (membership, attributes)."""
