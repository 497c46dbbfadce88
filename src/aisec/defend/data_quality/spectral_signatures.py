"""Spectral signatures (Tran, Li & Madry 2018, "Spectral Signatures in Backdoor Attacks"): within a class,
poisoned samples shift the representation along one direction, which the top singular vector of the class's
centred activations finds; each sample's score is its squared projection on that direction.

The paper removes the 1.5 * epsilon * n highest scores of each class, for an assumed bound epsilon on the
poisoned share of a class (`expected_rate`). With a trusted reference set the bound is not needed: projections
are centred on the class's reference samples and a sample is flagged when it lies more than `max_deviation`
reference standard deviations away along the direction. Centring on the reference also keeps the score
meaningful when poison is half of its class, where the class mean sits between the two groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aisec.core.errors import BadInputError
from aisec.defend.data_quality.reference import Reference, check_features, classes
from aisec.defend.data_quality.suspects import SuspectRanking


@dataclass(frozen=True)
class SpectralSignaturesConfig:
    expected_rate: float | None = None
    removal_factor: float = 1.5
    max_deviation: float = 4.0

    def __post_init__(self) -> None:
        if self.expected_rate is not None and not 0 < self.expected_rate < 1:
            raise BadInputError(
                f"spectral signatures: expected_rate must be in (0, 1), got {self.expected_rate}"
            )
        if not (self.removal_factor > 0 and self.max_deviation > 0):
            raise BadInputError("spectral signatures: removal_factor and max_deviation must be positive")


def spectral_signatures(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: SpectralSignaturesConfig = SpectralSignaturesConfig(),
    *,
    reference: Reference | None = None,
) -> SuspectRanking:
    """Score every training sample by its (reference-standardised, if given) projection on its class's top
    singular direction, and flag by the reference deviation or the paper's 1.5 epsilon rule."""
    check_features(features, labels, reference)
    if reference is None and config.expected_rate is None:
        raise BadInputError(
            "spectral signatures need a reference set or an expected_rate (the paper's epsilon)"
        )
    scores = torch.zeros(len(labels))
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for c, idx in classes(labels):
        if len(idx) < 2:
            continue
        z = features[idx].double()
        direction = torch.linalg.svd(z - z.mean(0), full_matrices=False).Vh[0]
        ref = reference.of_class(c).double() if reference is not None else None
        if ref is not None and len(ref) >= 2:
            ref_projection = ref @ direction
            spread = ref_projection.std().clamp_min(1e-12)
            deviation = ((z @ direction - ref_projection.mean()) / spread).abs()
            scores[idx] = deviation.float()
            flagged[idx] = deviation > config.max_deviation
        else:
            projection = ((z - z.mean(0)) @ direction) ** 2
            scores[idx] = projection.float()
            if config.expected_rate is not None:
                removed = min(len(idx), round(config.removal_factor * config.expected_rate * len(idx)))
                flagged[idx[projection.topk(removed).indices]] = True
    rule = (
        f"reference, {config.max_deviation:g} sd"
        if reference is not None
        else f"epsilon {config.expected_rate:g}"
    )
    return SuspectRanking(f"spectral signatures ({rule})", scores, flagged)
