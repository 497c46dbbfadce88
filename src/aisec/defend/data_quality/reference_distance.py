"""Distance to the trusted reference: how far a training sample's representation lies from the clean samples
of its class, measured in the class's own principal directions and whitened by the reference's covariance.

This is the Mahalanobis score that Lee et al. (2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks") use against inputs unlike the training data, turned on the
training set itself: a poisoned sample carries a trigger feature that no clean sample of its class has, so it is
an outlier of the class's clean distribution even when it is a small part of its class, where the single
direction of spectral signatures and the two clusters of activation clustering still mix it with clean samples.
Whitening by clean statistics is also the core of SPECTRE (Hayase et al. 2021, "SPECTRE: Defending Against
Backdoor Attacks Using Robust Statistics"), which estimates them robustly from the training set instead.

Threshold: the chi-square quantile of `components` degrees of freedom at `1 - false_alarm`, scaled by how much
larger than chi-square clean distances really are: the median squared distance of each half of the reference
under the covariance of the other half, over the chi-square median. Out-of-sample clean distances, so heavier
than Gaussian tails and the optimism of a covariance estimated from few samples do not flag clean samples, and
the training set, which may be mostly poison in the target class, plays no part in the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aisec.core.errors import BadInputError
from aisec.defend.data_quality.reference import Reference, check_features, classes
from aisec.defend.data_quality.suspects import SuspectRanking


@dataclass(frozen=True)
class ReferenceDistanceConfig:
    components: int = 10
    false_alarm: float = 1e-3

    def __post_init__(self) -> None:
        if self.components < 1 or not 0 < self.false_alarm < 1:
            raise BadInputError(
                f"reference distance: components >= 1 and false_alarm in (0, 1), got {self.components}, {self.false_alarm}"
            )


def reference_distance(
    features: torch.Tensor,
    labels: torch.Tensor,
    reference: Reference,
    config: ReferenceDistanceConfig = ReferenceDistanceConfig(),
) -> SuspectRanking:
    """Score = squared Mahalanobis distance of each training sample to its class's reference samples (in the
    class's top principal components, Ledoit-Wolf shrunk covariance), divided by the class threshold; flagged
    above 1. Classes with fewer than `components + 2` reference samples get score 0 and no flag."""
    from scipy.stats import chi2
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    check_features(features, labels, reference)
    scores = torch.zeros(len(labels))
    for c, idx in classes(labels):
        ref = reference.of_class(c).double().numpy()
        dims = min(config.components, len(idx) - 1, features.shape[1])
        if len(ref) < dims + 2 or dims < 1:
            continue
        z = features[idx].double().numpy()
        pca = PCA(dims, random_state=0).fit(z)
        ref_projected = pca.transform(ref)
        squared = LedoitWolf().fit(ref_projected).mahalanobis(pca.transform(z))
        consistency = max(1.0, _held_out_median(ref_projected) / chi2.median(dims))
        threshold = chi2.ppf(1 - config.false_alarm, dims) * consistency
        scores[idx] = torch.from_numpy(squared / threshold).float()
    return SuspectRanking(
        f"reference distance (Mahalanobis, {config.components} components, false alarm {config.false_alarm:g})",
        scores,
        scores > 1,
    )


def _held_out_median(ref: np.ndarray) -> float:
    """Median squared Mahalanobis distance of each half of the reference under the other half's covariance."""
    from sklearn.covariance import LedoitWolf

    order = np.random.default_rng(0).permutation(len(ref))
    halves = order[: len(ref) // 2], order[len(ref) // 2 :]
    distances = [LedoitWolf().fit(ref[a]).mahalanobis(ref[b]) for a, b in (halves, halves[::-1])]
    return float(np.median(np.concatenate(distances)))
