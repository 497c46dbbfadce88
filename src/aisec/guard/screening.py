"""Screening inputs before they are answered: the input detectors of `defend/robustness/detection/` (feature
squeezing, Xu et al. 2018; Mahalanobis, Lee et al. 2018) and an out-of-distribution score, the maximum softmax
probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples",
ICLR 2017). Each is calibrated at start-up on the configuration's clean natural inputs at its false-positive
rate; a row it flags is rejected or recorded, as the configuration says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aisec.core.errors import BadInputError
from aisec.data.dataset import as_labelled
from aisec.defend.robustness.detection.detector import Detector
from aisec.defend.robustness.detection.feature_squeezing import fit_feature_squeezing
from aisec.defend.robustness.detection.mahalanobis import fit_mahalanobis
from aisec.guard.config import ScreeningSection
from aisec.guard.model import GuardedModel


@dataclass(frozen=True)
class Screen:
    """What screening found in a batch: per detector, the indices of the rows it flagged."""

    flagged: dict[str, list[int]]

    @property
    def any(self) -> bool:
        return any(self.flagged.values())


class Screening:
    """The configured detectors and OOD threshold, calibrated on `reference` (x, and y for Mahalanobis)."""

    def __init__(
        self, section: ScreeningSection, model: GuardedModel, x: np.ndarray, y: np.ndarray | None
    ) -> None:
        self.section = section
        self.detectors: list[Detector] = []
        self.ood_threshold: float | None = None
        spec = model.spec
        clean = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        module = model.module()
        for name in section.input_detectors:
            if module is None:
                raise BadInputError(f"screening.input_detectors: {name} needs a local torch model")
            if name == "feature_squeezing":
                lower, upper = float(np.min(spec.lower)), float(np.max(spec.upper))
                self.detectors.append(
                    fit_feature_squeezing(module, clean, fpr=section.fpr, lower=lower, upper=upper)
                )
            else:
                if y is None:
                    raise BadInputError(
                        "screening.input_detectors: mahalanobis needs labels `y` in screening.reference"
                    )
                half = len(clean) // 2
                data = as_labelled(clean[:half], torch.as_tensor(y[:half]), name="screening.reference")
                self.detectors.append(fit_mahalanobis(module, data, clean[half:], fpr=section.fpr))
        if section.ood:
            if not model.gives_scores:
                raise BadInputError(
                    "screening.ood reads the model's probabilities; this model gives labels only"
                )
            probabilities = model.answer(x.astype(np.float32)).probabilities
            assert probabilities is not None
            self.ood_threshold = float(np.quantile(probabilities.max(1), section.fpr))

    def before(self, x: np.ndarray) -> Screen:
        """The input detectors' flags for a checked batch."""
        batch = torch.from_numpy(x)
        return Screen({d.name: np.flatnonzero(d.flags(batch).cpu().numpy()).tolist() for d in self.detectors})

    def after(self, probabilities: np.ndarray | None) -> Screen:
        """The OOD score's flags (maximum probability below the calibrated threshold) for the model's answer."""
        if self.ood_threshold is None or probabilities is None:
            return Screen({})
        return Screen({"ood": np.flatnonzero(probabilities.max(1) < self.ood_threshold).tolist()})
