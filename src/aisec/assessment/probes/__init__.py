"""Probes: one per attack class, each turning attack results into findings."""
