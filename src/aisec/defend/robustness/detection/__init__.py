"""Detectors of manipulated input: each scores an input (higher = more suspicious) and flags it above a
threshold set on clean data at a stated false-positive rate.

detector            the `Detector` protocol, `calibrate_threshold`, `detection_rates` (rates against an attack)
feature_squeezing   feature squeezing: bit depth and median filter (Xu, Evans & Qi, NDSS 2018)
mahalanobis         class Gaussians on the penultimate features (Lee et al., NeurIPS 2018)

`aisec.attacks.evasion.detector_aware` is the adaptive attack that measures them.
"""
