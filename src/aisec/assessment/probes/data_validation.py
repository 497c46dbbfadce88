"""Data you did not make, validated against a reference inside a plan (`probes.data_validation`;
docs/data-validation.md): the same checks as `aisec validate`, with the plan's model for prediction drift and
accuracy per class, and its factory and recipe to retrain without each source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from aisec.assessment.probes.data_validation_findings import validation_findings
from aisec.assessment.probes.retraining import Retraining, retrain_all
from aisec.assessment.validate_data import read_data_file, validation_config, validation_provenance
from aisec.core.attack_class import AttackClass
from aisec.data.dataset import LabelledData
from aisec.defend.data_validation.records import Records
from aisec.defend.data_validation.validate import Fit, Predict, validate

if TYPE_CHECKING:
    from aisec.assessment.finding import Finding
    from aisec.assessment.plan import DataValidationProbeSection
    from aisec.assessment.probe import AssessmentContext, Training
    from aisec.core.tasks import TaskRunner
    from aisec.targets.base import Target


@dataclass
class DataValidationProbe:
    config: DataValidationProbeSection
    attack_class: AttackClass = AttackClass.POISONING
    name: str = "data_validation"
    _files: tuple[Records, Records] | None = field(default=None, init=False, repr=False)

    def check(self, context: AssessmentContext) -> None:
        """Both files must read (format, columns, unique keys, complete labels) before any probe runs."""
        self._files = (
            read_data_file(self.config.reference, key=self.config.key),
            read_data_file(self.config.current, key=self.config.key),
        )

    def run(self, context: AssessmentContext) -> list[Finding]:
        if self._files is None:
            self.check(context)
        assert self._files is not None
        reference, current = self._files
        config = validation_config(self.config, context.seed)
        readable = _model_reads(context.target, reference)
        predict = _predict(context.target) if readable else None
        fit = _fit(context.tasks, context.training) if readable and context.training is not None else None
        result = validate(reference, current, config, predict=predict, fit=fit)
        provenance = validation_provenance(result, reference, current, config, context.model_sha256)
        return validation_findings(result, context.policy.data_validation, provenance)


def _model_reads(target: Target, records: Records) -> bool:
    """Whether the plan's model takes these records as input: numeric columns as its features, or images of
    its input shape, with class indices for labels."""
    if records.labels is not None and records.labels.dtype == object:
        return False
    shape = tuple(target.spec.shape)
    if records.array is not None:
        return tuple(records.array.shape[1:]) == shape
    return all(c.kind == "numeric" for c in records.columns) and shape == (len(records.columns),)


def _predict(target: Target) -> Predict:
    def predict(x: np.ndarray) -> np.ndarray:
        return target.labels(torch.as_tensor(x, dtype=torch.float32)).numpy()

    return predict


def _fit(tasks: TaskRunner, training: Training) -> Fit | None:
    """Retraining through the plan's factory and recipe (the one training loop), when the plan gives both: each
    model a job of the assessment's task runner, so that a rerun reads it back from the cache. Source dependence
    asks for one model at a time (the full one, then one per source left out), so they run one after another."""
    if training.model_fn is None or training.fit is None:
        return None

    def fit(x: np.ndarray, y: np.ndarray, seed: int) -> Predict:
        data = LabelledData(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))
        model = retrain_all(
            tasks, training, {"model": Retraining(data, seed)}, what="data validation: retraining"
        )["model"]

        def predict(inputs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.as_tensor(inputs, dtype=torch.float32)).argmax(1).numpy()

        return predict

    return fit
