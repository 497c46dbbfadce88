"""Labelled data with its provenance, converters from what users have, and the built-in demo sets."""
