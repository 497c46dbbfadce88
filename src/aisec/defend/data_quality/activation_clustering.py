"""Activation clustering (Chen et al. 2018, "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering"): the last hidden layer's activations of each class, reduced to a few dimensions and split into two
clusters; poisoned samples of a class activate differently (the trigger, not the class, drives them) and fall
into a cluster of their own.

Which cluster is the poison: with a trusted reference set (`reference`), the cluster the class's reference
samples do not populate, as a share of the class, at most `min_reference_ratio` times its share of the
training samples; this holds at any poison fraction. Without one, the paper's size rule: a cluster holding less
than `max_size` of its class, which fails once poison is the larger part of its class. PCA replaces the paper's
ICA: it is deterministic and, for two-means, the rotation ICA adds changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aisec.core.errors import BadInputError
from aisec.defend.data_quality.reference import Reference, check_features, classes
from aisec.defend.data_quality.suspects import SuspectRanking


@dataclass(frozen=True)
class ActivationClusteringConfig:
    components: int = 10
    clusters: int = 2
    max_size: float = 0.35
    min_reference_ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.components < 1 or self.clusters < 2:
            raise BadInputError(
                f"activation clustering: components >= 1 and clusters >= 2, got {self.components}, {self.clusters}"
            )
        if not (0 < self.max_size < 1 and 0 < self.min_reference_ratio < 1):
            raise BadInputError("activation clustering: max_size and min_reference_ratio must be in (0, 1)")


def activation_clustering(
    features: torch.Tensor,
    labels: torch.Tensor,
    config: ActivationClusteringConfig = ActivationClusteringConfig(),
    *,
    reference: Reference | None = None,
    seed: int = 0,
) -> SuspectRanking:
    """Score every training sample by how unlike its class's reference (or how small) its cluster is; flag the
    clusters that break the rule. Classes with too few samples to split are left unflagged."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    check_features(features, labels, reference)
    scores = torch.zeros(len(labels))
    flagged = torch.zeros(len(labels), dtype=torch.bool)
    for c, idx in classes(labels):
        if len(idx) < 2 * config.clusters:
            continue
        z = features[idx].double().numpy()
        pca = PCA(min(config.components, len(idx) - 1, z.shape[1]), random_state=seed).fit(z)
        kmeans = KMeans(config.clusters, n_init=10, random_state=seed).fit(pca.transform(z))
        assignment = kmeans.labels_
        ref = reference.of_class(c) if reference is not None else None
        ref_assignment = (
            kmeans.predict(pca.transform(ref.double().numpy())) if ref is not None and len(ref) else None
        )
        for k in range(config.clusters):
            members = torch.from_numpy(assignment == k)
            share = float(members.float().mean())
            if ref_assignment is not None:
                ratio = float(np.mean(ref_assignment == k)) / share
                scores[idx[members]] = 1.0 - min(ratio, 1.0)
                flagged[idx[members]] = ratio < config.min_reference_ratio
            else:
                scores[idx[members]] = 1.0 - share
                flagged[idx[members]] = share < config.max_size
    rule = "reference" if reference is not None else "size"
    return SuspectRanking(f"activation clustering ({config.clusters} clusters, {rule} rule)", scores, flagged)
