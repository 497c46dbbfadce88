"""The blue team: controls that stop the attacks in `aisec.attacks`, one folder per principle."""
