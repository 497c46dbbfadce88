"""Threat model, assessment plans, probes (attack + metric + policy -> finding) and the runner."""
