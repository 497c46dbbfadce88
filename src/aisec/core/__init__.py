"""The bottom layer: what every other layer shares and which imports nothing of aisec above it.

errors and exit codes, severity and attack-class vocabulary, progress reporting, executors, the one training
loop and its seeding, atomic file writes, importing the user's own code, the package version.
"""
