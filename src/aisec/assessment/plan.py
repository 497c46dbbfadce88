"""The YAML assessment plan: what to attack, with which data, under which threat model and policy.

Validated with pydantic; every error names the file, the line and the field (`plan.yaml:7: target.kind: ...`).
The schema is documented in docs/plan.md. Each probe's section registers the probe (aisec.assessment.registry)
and says what else of the plan the probe needs (`plan_needs`); `ProbesSection` offers every registered one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from aisec.assessment.registry import PROBES, ProbeSpec, register
from aisec.assessment.threat_model import ThreatModel
from aisec.attacks.evasion.registry import ATTACK_NAMES
from aisec.core.errors import PlanError
from aisec.core.executor import choice_problem
from aisec.core.severity import Severity
from aisec.targets.base import Access


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSection(_Section):
    shape: tuple[int, ...] = Field(min_length=1, description="shape of one sample, e.g. [1, 8, 8]")
    num_classes: int = Field(ge=2)
    lower: float | tuple[float, ...] = 0.0
    upper: float | tuple[float, ...] = 1.0


class TargetSection(_Section):
    """The model. torch: `factory` builds the module (your code) and `path` holds its weights (a state dict,
    read with torch.load(weights_only=True)). onnx: `path` is the model. torchscript files run code when
    loaded: refused unless `trusted: true`. sklearn files: loaded with joblib if `trusted: true`, otherwise only
    if the supply-chain scanner calls them safe, through its allow-list unpickler (docs/supply-chain.md)."""

    kind: Literal["torch", "torchscript", "onnx", "sklearn"]
    path: Path
    factory: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    trusted: bool = False
    input: InputSection
    device: str = "cpu"

    @model_validator(mode="after")
    def _factory_for_torch(self) -> TargetSection:
        if self.kind == "torch" and self.factory is None:
            raise ValueError("a torch target needs `factory: package.module:function` that builds the module")
        if self.kind != "torch" and self.factory is not None:
            raise ValueError(f"`factory` applies to torch targets only, not {self.kind}")
        return self


_FIELD_PATH = r"^[^.]+(\.[^.]+)*$"  # a JSON field, or a dotted path into nested objects ("outputs.probs")


class HttpRequestSection(_Section):
    field: str = Field("inputs", pattern=_FIELD_PATH, description="the request's field holding the batch")


class HttpResponseSection(_Section):
    scores: str = Field("scores", pattern=_FIELD_PATH, description="the answer's field holding class scores")
    labels: str = Field("labels", pattern=_FIELD_PATH, description="the answer's field holding labels")


class HttpTargetSection(_Section):
    """A model served over HTTP (aisec.targets.http_target): each batch is POSTed as JSON to `url`, class scores
    or labels are read from the JSON answer. `headers` values may name environment variables as `${NAME}`,
    expanded when the target is built: secrets never live in plans."""

    kind: Literal["http"]
    url: str = Field(description="the endpoint, http:// or https://")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers; `${NAME}` expanded")
    input: InputSection
    returns: Literal["scores", "labels"] = "scores"
    score_kind: Literal["probabilities", "logits"] = "probabilities"
    request: HttpRequestSection = HttpRequestSection()
    response: HttpResponseSection = HttpResponseSection()
    batch_size: int = Field(256, gt=0, description="samples per request")
    timeout_s: float = Field(10.0, gt=0, description="seconds to wait for one answer")
    retries: int = Field(5, ge=0, description="retries of a 429, a 503, a broken connection or a timeout")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(f"give an http:// or https:// URL with a host, not {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "the URL holds credentials: pass them in `headers` as `${NAME}`, never in the plan"
            )
        return url


AnyTargetSection = Annotated[TargetSection | HttpTargetSection, Field(discriminator="kind")]
TARGET_KINDS = (*get_args(TargetSection.model_fields["kind"].annotation), "http")


class DataSection(_Section):
    builtin: Literal["digits", "breast_cancer"] | None = None
    split: Literal["train", "test"] = "test"
    path: Path | None = Field(None, description=".npz file with arrays `x` and `y`")
    samples: int | None = Field(None, gt=0, description="a seeded random subset of this many samples")

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of `builtin` or `path`")
        return self


class ProbeSection(_Section):
    """One probe's section of `probes`; subclasses are registered with `registry.register`."""

    def plan_needs(self, plan: Plan) -> None:
        """Raise ValueError when the rest of the plan cannot serve this probe (checked as the plan loads)."""


@register("evasion", probe="aisec.assessment.probes.evasion:EvasionProbe")
class EvasionProbeSection(ProbeSection):
    attacks: tuple[str, ...] | None = Field(
        None, description="attacks of the cascade, in order; default: the strongest the knowledge allows"
    )
    minimal_perturbation: bool = True
    masking_checks: bool = True
    examples: int = Field(6, ge=0, le=50)
    batch_size: int = Field(1000, gt=0)

    @field_validator("attacks")
    @classmethod
    def _known(cls, attacks: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if attacks is not None:
            if not attacks:
                raise ValueError("list at least one attack, or leave `attacks` out")
            for name in attacks:
                if name not in ATTACK_NAMES:
                    raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACK_NAMES)}")
        return attacks


@register("extraction", probe="aisec.assessment.probes.extraction:ExtractionProbe")
class ExtractionProbeSection(ProbeSection):
    """Stealing a working copy: a surrogate trained on the target's answers, and for linear scikit-learn models
    equation solving (docs/privacy.md)."""

    query_budget: int = Field(2000, gt=0, description="queries the attacker may make in all")
    strategies: tuple[Literal["natural", "synthetic", "active", "perturbation"], ...] = Field(
        ("natural", "active"), min_length=1
    )
    transfer: bool = Field(
        True, description="measure whether PGD examples made on the surrogate fool the target"
    )


@register("inversion", probe="aisec.assessment.probes.inversion:InversionProbe")
class InversionProbeSection(ProbeSection):
    """Class-representative reconstruction (Fredrikson et al. 2015)."""

    classes: tuple[int, ...] | None = Field(None, description="classes to reconstruct; default all")
    steps: int = Field(300, gt=0)
    query_budget: int = Field(
        40_000, gt=0, description="score-only attacker: queries for all classes together"
    )


@register("membership", probe="aisec.assessment.probes.membership:MembershipProbe")
class MembershipProbeSection(ProbeSection):
    """Was a record in the training set? Needs `training.data`; LiRA and RMIA also `training.recipe`."""

    attacks: tuple[Literal["loss", "lira", "rmia", "gap", "noise"], ...] | None = Field(
        None,
        min_length=1,
        description="default: loss, lira and rmia for an attacker with scores, gap and noise with labels only",
    )
    records: int = Field(200, gt=0, description="members under attack, and as many non-members from `data`")
    shadows: int = Field(16, ge=4, description="shadow models (LiRA, RMIA)")

    def plan_needs(self, plan: Plan) -> None:
        _needs_training_data(plan)
        by_default = ("lira", "rmia") if plan.threat_model.knowledge is not Access.LABELS else ()
        attacks = by_default if self.attacks is None else self.attacks
        shadow_attacks = sorted({"lira", "rmia"} & set(attacks))
        if shadow_attacks:
            _needs_retraining(plan, ", ".join(shadow_attacks))


@register("attribute", probe="aisec.assessment.probes.attribute:AttributeProbe")
class AttributeProbeSection(ProbeSection):
    """Attribute inference on training records: one sensitive feature hidden, guessed among `values`. Needs
    `training.data`."""

    feature: int = Field(ge=0, description="index of the sensitive feature in the flattened sample")
    values: tuple[float, ...] = Field(min_length=2, description="the values the feature takes")
    records: int = Field(200, gt=0, description="members attacked, and as many non-members from `data`")

    def plan_needs(self, plan: Plan) -> None:
        _needs_training_data(plan)


PoisonRate = Annotated[float, Field(gt=0, lt=1, description="fraction of the training set poisoned")]


@register("poisoning", probe="aisec.assessment.probes.poisoning:PoisoningProbe")
class PoisoningProbeSection(ProbeSection):
    """Label-flipping poisoning: the training set poisoned at each rate, the model retrained with
    `training.recipe`, and the label audit (confident learning, nearest neighbours) that should find it. Needs
    `training`."""

    attacks: tuple[Literal["random_flip", "targeted_flip"], ...] = Field(
        ("random_flip", "targeted_flip"), min_length=1
    )
    rates: tuple[PoisonRate, ...] = Field((0.02, 0.05, 0.1), min_length=1)
    source: int | None = Field(
        None, ge=0, description="targeted flip: the class relabelled; default the largest"
    )
    target: int | None = Field(None, ge=0, description="targeted flip: its new label; default the next class")
    audit: bool = Field(True, description="also audit the training set as given for label issues")
    folds: int = Field(5, ge=2, description="cross-validation folds for confident learning's probabilities")

    def plan_needs(self, plan: Plan) -> None:
        _needs_retraining_on_poison(plan, "poisoning")


@register("backdoor", probe="aisec.assessment.probes.backdoor:BackdoorProbe")
class BackdoorProbeSection(ProbeSection):
    """A backdoor planted by poisoning the training set (each trigger at each rate), retrained with
    `training.recipe`; then the data-side screening and repair, the model-side scans (Neural Cleanse, STRIP)
    and fine-pruning. Needs `training`."""

    triggers: tuple[Literal["patch", "blend", "warp"], ...] = Field(("patch", "blend", "warp"), min_length=1)
    rates: tuple[PoisonRate, ...] = Field((0.01, 0.05, 0.1), min_length=1)
    target_class: int = Field(0, ge=0)
    mode: Literal["dirty", "clean"] = "dirty"
    repair: tuple[Literal["retrain", "fine_pruning"], ...] = ("retrain", "fine_pruning")
    strip: bool = Field(True, description="measure STRIP, the run-time detector of triggered inputs")
    neural_cleanse: bool = Field(
        True,
        description="scan the model under assessment, and each trigger's backdoored model, with Neural Cleanse",
    )

    def plan_needs(self, plan: Plan) -> None:
        _needs_retraining_on_poison(plan, "backdoor")


@register("inspection", probe="aisec.assessment.probes.inspection:InspectionProbe")
class InspectionProbeSection(ProbeSection):
    """A model you did not build, checked with the model and clean data only (docs/inspect.md): the static scan
    of the model file, then its signature when one is given, before the model is loaded; a behavioural backdoor
    scan, the shortcut check and explanations. Black boxes get the checks that need no gradients; the report
    says which were skipped and why."""

    backdoor_scan: bool = Field(True, description="reverse-engineer triggers (Neural Cleanse, MM-BD)")
    shortcuts: bool = Field(True, description="is a class decided by a watermark or one leaked feature?")
    explanations: tuple[Literal["integrated_gradients", "saliency", "occlusion"], ...] = Field(
        ("integrated_gradients",),
        description="attribution methods for torch models; black boxes get permutation importance",
    )
    samples: int = Field(500, gt=0, description="clean samples the checks use: a seeded subset of `data`")
    signature: Path | None = Field(None, description="the model's signature; default <model>.sig")
    public_key: Path | None = Field(None, description="verify the signature with this key (PEM)")

    @model_validator(mode="after")
    def _key_for_signature(self) -> InspectionProbeSection:
        if self.signature is not None and self.public_key is None:
            raise ValueError("a signature is verified with `public_key`: give the publisher's key (PEM)")
        return self

    def plan_needs(self, plan: Plan) -> None:
        if plan.target.kind == "http":
            raise ValueError(
                "probes.inspection scans and loads the model file: an http target has none; inspect the file "
                "behind the service (`aisec inspect`), or use the other probes"
            )


class DataFileSection(_Section):
    """A data set file for `probes.data_validation`: .npz (arrays `x`, `y`, optional `ids`, `source`), CSV or
    Parquet with named label, key and source columns (docs/data-validation.md)."""

    path: Path
    label: str | None = Field("label", description="CSV/Parquet: the label column (null: unlabelled)")
    key: str | None = Field(None, description="CSV/Parquet: the column that identifies a record")
    source: str | None = Field(None, description="CSV/Parquet: the column naming each record's source")


@register("data_validation", probe="aisec.assessment.probes.data_validation:DataValidationProbe")
class DataValidationProbeSection(ProbeSection):
    """Data you did not make, validated against a reference (docs/data-validation.md): schema and ranges,
    drift with false-discovery-rate control and effect sizes, labels the provider changed, source dependence,
    duplicates and leakage; the plan's model gives prediction drift and accuracy per class."""

    reference: DataFileSection
    current: DataFileSection
    key: str | None = Field(None, description="the key column of both files (shorthand for each one's `key`)")
    fdr: float = Field(0.04, gt=0, lt=1, description="false discovery rate of the per-feature drift tests")
    min_effect: float = Field(0.05, ge=0, description="smallest drift that counts, in reference std units")
    multivariate_alpha: float = Field(0.01, gt=0, lt=1, description="level of the two-sample tests")
    near_tolerance: float = Field(1e-3, ge=0, description="near duplicates: largest difference, in std units")


def _needs_training_data(plan: Plan) -> None:
    if plan.training is None:
        raise ValueError(
            "probes.membership, probes.attribute and defences.dp_training need `training.data`, the model's "
            "training set"
        )


def _needs_retraining(plan: Plan, who: str) -> None:
    """`who` (shadow-model attacks, DP-SGD) trains models like the plan's: a recipe and a torch factory."""
    if plan.training is None or plan.training.recipe is None:
        raise ValueError(f"{who} train models like yours: give `training.recipe: package.module:function`")
    if plan.target.kind != "torch":
        raise ValueError(
            "shadow models and DP-SGD retrain the model: they need a torch target with `factory`"
        )


def _needs_retraining_on_poison(plan: Plan, probe: str) -> None:
    if plan.training is None or plan.training.recipe is None or plan.target.kind != "torch":
        raise ValueError(
            f"probes.{probe} retrains the model on poisoned data: it needs a torch target with `factory`, "
            "`training.data` and `training.recipe`"
        )


class _Probes(_Section):
    """The plan's `probes`: one optional field per registered probe, added by `create_model` below."""

    @model_validator(mode="after")
    def _at_least_one(self) -> _Probes:
        if not self.enabled():
            raise ValueError("enable at least one probe (e.g. `evasion: {}`)")
        return self

    def enabled(self) -> list[tuple[ProbeSpec, ProbeSection]]:
        """The probes the plan enables with their sections, in registration order."""
        sections = ((spec, getattr(self, name)) for name, spec in PROBES.items())
        return [(spec, section) for spec, section in sections if section is not None]


if TYPE_CHECKING:
    ProbesSection = _Probes
else:
    ProbesSection = create_model(
        "ProbesSection",
        __base__=_Probes,
        __module__=__name__,
        **{name: (spec.section | None, None) for name, spec in PROBES.items()},
    )


class TrainingSection(_Section):
    """How the model was trained: its training set (the members, for membership inference) and the recipe
    `package.module:function`, called as fit(model, data, seed=..., **recipe_args) -> model, that shadow
    models are trained with."""

    data: DataSection
    recipe: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    recipe_args: dict[str, Any] = Field(default_factory=dict)


class OutputHardeningSection(_Section):
    """One served-API variant to re-run the privacy probes against (aisec.defend.robustness.output_hardening)."""

    top_k: int | None = Field(None, ge=1)
    decimals: int | None = Field(None, ge=0, le=15)
    label_only: bool = False


class DPTrainingSection(_Section):
    """Retrain the model with DP-SGD (aisec.defend.robustness.dp_training) and re-run membership inference."""

    target_epsilon: float = Field(gt=0)
    delta: float | None = Field(None, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-2, gt=0)
    batch_size: int = Field(64, ge=1)


class GradientShapingSection(_Section):
    """Retrain the poisoned training sets (backdoors: at the lowest rate) with gradient shaping (aisec.defend.data_quality.gradient_shaping):
    per-example gradients clipped to `max_grad_norm`, Gaussian noise of `noise_multiplier` times that added."""

    max_grad_norm: float = Field(1.0, gt=0)
    noise_multiplier: float = Field(0.7, gt=0)


class DefenceTrainingSection(_Section):
    """How a defence trains its model: aisec's training loop from the target's `factory` on `training.data`
    (a user's own recipe cannot be made adversarial from outside). The defaults train the demo CNN."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-2, gt=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"


class AdversarialTrainingSection(DefenceTrainingSection):
    """One adversarially trained model (aisec.defend.robustness.adversarial_training): PGD-AT (Madry et al.
    2018), TRADES (Zhang et al. 2019), fast FGSM training with random start (Wong et al. 2020) or IBP training
    (Gowal et al. 2019). `eps` is in input units, under the threat model's norm (L-inf)."""

    method: Literal["pgd", "trades", "fast", "ibp"]
    eps: float = Field(gt=0)
    steps: int = Field(10, ge=1, description="inner attack steps (pgd, trades)")
    beta: float = Field(6.0, gt=0, description="TRADES: weight of the robustness term")


class RandomizedSmoothingSection(DefenceTrainingSection):
    """A model trained with Gaussian noise and certified by randomised smoothing (Cohen et al. 2019)."""

    sigma: float = Field(0.25, gt=0)
    n0: int = Field(100, ge=1, description="noise samples that select the predicted class")
    n: int = Field(10_000, ge=1, description="noise samples that estimate its probability")
    alpha: float = Field(
        0.001, gt=0, lt=1, description="the certificate fails with probability at most alpha"
    )
    samples: int = Field(100, ge=1, description="assessment samples certified (the first ones)")


class CertificationSection(_Section):
    """Certified L-inf accuracy at the threat model's budgets by bound propagation (IBP or CROWN), for the
    model under assessment and every adversarially trained one."""

    method: Literal["crown", "ibp"] = "crown"
    samples: int = Field(200, ge=1, description="assessment samples certified (the first ones)")


class InputTransformSection(_Section):
    """One input transformation put in front of the model (aisec.defend.robustness.input_transforms)."""

    bit_depth: int | None = Field(None, ge=1, le=8)
    median: int | None = Field(None, ge=2, le=5, description="median filter window (pixels)")

    @model_validator(mode="after")
    def _one_at_least(self) -> InputTransformSection:
        if self.bit_depth is None and self.median is None:
            raise ValueError("give `bit_depth` or `median` (or both)")
        return self


class NullLabellingSection(DefenceTrainingSection):
    """A model with an extra NULL class trained on perturbed inputs (Hosseini et al. 2017)."""

    eps: float = Field(gt=0)


class DefencesSection(_Section):
    """Controls whose effect the probes measure, each beside the undefended model."""

    output_hardening: tuple[OutputHardeningSection, ...] = ()
    dp_training: DPTrainingSection | None = None
    gradient_shaping: GradientShapingSection | None = None
    adversarial_training: tuple[AdversarialTrainingSection, ...] = ()
    randomized_smoothing: RandomizedSmoothingSection | None = None
    certification: CertificationSection | None = None
    input_detectors: tuple[Literal["feature_squeezing", "mahalanobis"], ...] = ()
    input_transforms: tuple[InputTransformSection, ...] = ()
    null_labelling: NullLabellingSection | None = None

    @property
    def robustness(self) -> bool:
        """Whether any control that the evasion probe measures is asked for."""
        return bool(
            self.adversarial_training
            or self.randomized_smoothing
            or self.certification
            or self.input_detectors
            or self.input_transforms
            or self.null_labelling
        )

    @property
    def retrains(self) -> list[str]:
        """The fields of the controls that train a model from the target's factory."""
        fields = [f"adversarial_training[{i}]" for i in range(len(self.adversarial_training))]
        fields += [name for name in ("randomized_smoothing", "null_labelling") if getattr(self, name)]
        return fields


class DataValidationPolicy(_Section):
    """Thresholds for the data-validation findings (AISEC-DAT-*); the defaults fail on any departure that the
    tests can tell from chance."""

    max_out_of_range_rate: float = Field(
        0.01, ge=0, le=1, description="largest share of a column's values outside the reference's range"
    )
    max_missing_increase: float = Field(
        0.05, ge=0, le=1, description="largest rise of a column's share of missing values"
    )
    max_unseen_category_rate: float = Field(
        0.01, ge=0, le=1, description="largest share of a column's values in categories the reference lacks"
    )
    max_drifted_features: int = Field(0, ge=0, description="features allowed to drift")
    fail_on_multivariate_drift: bool = True
    fail_on_label_drift: bool = Field(True, description="fail when the labels' distribution drifted")
    max_label_change_rate: float = Field(
        0.0, ge=0, le=1, description="largest share of matched records whose label changed"
    )
    fail_on_class_change: bool = Field(True, description="fail when a class appeared or vanished")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="lowest model accuracy on current data")
    max_source_share: float = Field(0.5, gt=0, le=1, description="largest share one source may hold")
    fail_on_critical_source: bool = Field(
        True, description="fail when leaving one source out moves accuracy beyond its confidence interval"
    )
    max_leaked_share: float = Field(
        0.0, ge=0, le=1, description="largest share of current records that repeat a reference record"
    )


class PolicySection(_Section):
    """Thresholds; a finding that breaks one makes `aisec assess` exit with 1."""

    min_clean_accuracy: float | None = Field(None, ge=0, le=1)
    min_robust_accuracy: dict[float, float] = Field(
        default_factory=dict, description="budget -> lowest acceptable robust accuracy at that budget"
    )
    fail_on_unreliable: bool = Field(
        True, description="fail when a masking check makes the figures unreliable"
    )
    max_membership_auc: float | None = Field(
        None, ge=0.5, le=1, description="fail when a membership attack's ROC AUC exceeds this"
    )
    max_extraction_agreement: float | None = Field(
        None, ge=0, le=1, description="fail when a surrogate agrees with the model on more than this share"
    )
    fail_on: Severity | None = Field(
        None, description="fail when any finding is at least this severe (info, low, medium, high, critical)"
    )
    data_validation: DataValidationPolicy = DataValidationPolicy()

    @field_validator("min_robust_accuracy")
    @classmethod
    def _fractions(cls, thresholds: dict[float, float]) -> dict[float, float]:
        for budget, value in thresholds.items():
            if not 0 <= value <= 1:
                raise ValueError(f"threshold at budget {budget} must be in [0, 1], got {value}")
        return thresholds


class ExecutorSection(_Section):
    """Where the probes' independent jobs run (docs/scale.md): in this process (the default), a pool of
    `workers` processes on this machine, or Ray tasks (`address: local` starts a Ray of `workers` CPUs here; `auto`
    or `host:port` joins a cluster). Each job runs with `threads` torch threads; the figures are bit-identical
    whichever executor ran them, for the same `threads` and device."""

    kind: Literal["in_process", "pool", "ray"] = "in_process"
    workers: int | None = Field(
        None, ge=1, description="jobs run at once (default: a pool, one per CPU core)"
    )
    threads: int = Field(1, ge=1, description="torch threads per job")
    address: str = Field("local", min_length=1, description="ray: local, auto, host:port or ray://host:port")
    cpus_per_task: float = Field(1.0, ge=0)
    gpus_per_task: float = Field(
        0.0, ge=0, description="ray: a share of a GPU per job (training runs on CUDA)"
    )

    @model_validator(mode="after")
    def _options_fit_the_kind(self) -> ExecutorSection:
        ray_options = {"address", "cpus_per_task", "gpus_per_task"} & self.model_fields_set
        problem = choice_problem(self.kind, workers=self.workers, ray_options=ray_options)
        if problem is not None:
            raise ValueError(problem)
        return self


class TrackingSection(_Section):
    """Where the assessment is logged as an experiment run (docs/scale.md): an MLflow tracking URI (a database,
    `sqlite:///mlflow.db` or `postgresql://...`, or an MLflow server on `http(s)://`), and the experiment's name."""

    mlflow: str = Field(min_length=1)
    experiment: str = Field("aisec", min_length=1)

    @field_validator("mlflow")
    @classmethod
    def _a_tracking_uri(cls, uri: str) -> str:
        if "://" not in uri or uri.startswith("file:"):
            raise ValueError(
                f"{uri!r} is a folder: MLflow's file store is deprecated and refused; give a database "
                "(sqlite:///mlflow.db, postgresql://...) or a tracking server (http://...)"
            )
        return uri


class Plan(_Section):
    name: str = "assessment"
    seed: int = 0
    target: AnyTargetSection
    # The same model without the service's controls (its file, or its bare endpoint): every probe then runs
    # against both, and the report sets their headline figures side by side (AISEC-GRD-002).
    baseline: AnyTargetSection | None = None
    data: DataSection
    threat_model: ThreatModel = ThreatModel()
    probes: ProbesSection
    training: TrainingSection | None = None
    defences: DefencesSection = DefencesSection()
    policy: PolicySection = PolicySection()
    executor: ExecutorSection = ExecutorSection()
    tracking: TrackingSection | None = None

    @model_validator(mode="after")
    def _policy_budgets_assessed(self) -> Plan:
        missing = sorted(set(self.policy.min_robust_accuracy) - set(self.threat_model.budgets))
        if missing:
            raise ValueError(
                f"policy.min_robust_accuracy names budgets {missing} that threat_model.budgets does not assess"
            )
        return self

    @model_validator(mode="after")
    def _baseline_compares_served_models(self) -> Plan:
        if self.baseline is not None and getattr(self.probes, "inspection", None) is not None:
            raise ValueError(
                "`baseline` compares probes against two models; probes.inspection scans one file"
            )
        if self.baseline is not None and tuple(self.baseline.input.shape) != tuple(self.target.input.shape):
            raise ValueError("baseline.input: the baseline must take the target's inputs (the same shape)")
        return self

    @model_validator(mode="after")
    def _probe_needs(self) -> Plan:
        for _, section in self.probes.enabled():
            section.plan_needs(self)
        return self

    @model_validator(mode="after")
    def _defence_needs(self) -> Plan:
        enabled = {spec.name for spec, _ in self.probes.enabled()}
        if self.defences.dp_training is not None:
            _needs_training_data(self)
            _needs_retraining(self, "defences.dp_training")
            if "membership" not in enabled:
                raise ValueError("defences.dp_training is measured by probes.membership: enable it")
        if self.defences.gradient_shaping is not None and not enabled & {"poisoning", "backdoor"}:
            raise ValueError(
                "defences.gradient_shaping is measured by probes.poisoning or probes.backdoor: enable one"
            )
        _robustness_defence_needs(self, enabled)
        return self


def _robustness_defence_needs(plan: Plan, enabled: set[str]) -> None:
    """The robustness controls are measured by the evasion probe, attack a torch model, and (those that train)
    retrain it from its factory on the training set; their L-inf budgets must fit the input range."""
    defences = plan.defences
    if not defences.robustness:
        return
    first = _first_robustness_field(defences)
    if "evasion" not in enabled:
        raise ValueError(f"defences.{first} is measured by probes.evasion: enable it")
    if plan.target.kind != "torch":
        raise ValueError(
            f"defences.{first} needs a torch target (white box): the controls train, wrap or inspect the module"
        )
    if defences.retrains and (plan.training is None or plan.target.factory is None):
        raise ValueError(
            f"defences.{defences.retrains[0]} trains a model like yours: give the target's `factory` and "
            "`training.data`"
        )
    if defences.retrains and plan.threat_model.norm != "linf":
        raise ValueError(f"defences.{defences.retrains[0]}: budgets are L-inf; set threat_model.norm: linf")
    if defences.certification is not None and plan.threat_model.norm != "linf":
        raise ValueError("defences.certification certifies L-inf budgets; set threat_model.norm: linf")
    spec = plan.target.input
    if spec is None:  # a plan given to aisec.assess may leave the input spec to inference: checked when run
        return
    lower = min(spec.lower) if isinstance(spec.lower, tuple) else spec.lower
    widths = (
        [u - lo for u, lo in zip(_as_tuple(spec.upper), _as_tuple(spec.lower), strict=False)]
        if isinstance(spec.lower, tuple) or isinstance(spec.upper, tuple)
        else [spec.upper - lower]
    )
    width = min(widths)
    budgets = [(f"adversarial_training[{i}].eps", s.eps) for i, s in enumerate(defences.adversarial_training)]
    if defences.null_labelling is not None:
        budgets.append(("null_labelling.eps", defences.null_labelling.eps))
    for field, eps in budgets:
        if eps > width:
            raise ValueError(
                f"defences.{field}: {eps:g} exceeds the input range (width {width:g}); budgets are in input "
                "units (ART's default of 8 assumes 0-255 pixels)"
            )


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return value if isinstance(value, tuple) else (value,)


def _first_robustness_field(defences: DefencesSection) -> str:
    for name in (
        "adversarial_training",
        "randomized_smoothing",
        "certification",
        "input_detectors",
        "input_transforms",
        "null_labelling",
    ):
        if getattr(defences, name):
            return name
    raise AssertionError("no robustness control")


def load_plan(path: str | Path) -> tuple[Plan, str]:
    """Read and validate a plan; relative paths in it are resolved against the plan's folder.

    Returns the plan and the sha256 of the file. Raises PlanError naming the file, line and field.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PlanError(f"{path}: cannot read the plan: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        where = getattr(e, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise PlanError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a plan is a YAML mapping with `target`, `data` and `probes`")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        loc, field, message = _first_error(e)
        raise PlanError(f"{path}:{_line_of(node, loc)}: {field}: {message}") from None
    base = path.resolve().parent
    plan = plan.model_copy(
        update={
            "target": _located(plan.target, base),
            "baseline": _located(plan.baseline, base) if plan.baseline is not None else None,
            "data": _resolved(plan.data, base),
            "training": plan.training.model_copy(update={"data": _resolved(plan.training.data, base)})
            if plan.training
            else None,
            "tracking": plan.tracking.model_copy(update={"mlflow": _tracking_uri(plan.tracking.mlflow, base)})
            if plan.tracking
            else None,
        }
    )
    validation = getattr(plan.probes, "data_validation", None)
    if validation is not None:
        files = {
            side: getattr(validation, side).model_copy(update={"path": base / getattr(validation, side).path})
            for side in ("reference", "current")
        }
        probes = plan.probes.model_copy(update={"data_validation": validation.model_copy(update=files)})
        plan = plan.model_copy(update={"probes": probes})
    inspection = getattr(plan.probes, "inspection", None)
    if inspection is not None:
        files = {
            k: base / v for k in ("signature", "public_key") if (v := getattr(inspection, k)) is not None
        }
        probes = plan.probes.model_copy(update={"inspection": inspection.model_copy(update=files)})
        plan = plan.model_copy(update={"probes": probes})
    return plan, hashlib.sha256(raw).hexdigest()


def _first_error(error: ValidationError) -> tuple[tuple[Any, ...], str, str]:
    """The first error's location, its dotted field name and its message, as plan errors print them. In the
    `target` union the location names the fields of the section `kind` chose (pydantic puts the kind in it)."""
    first = error.errors()[0]
    loc, message = tuple(first["loc"]), first["msg"].removeprefix("Value error, ")
    if loc[:1] == ("target",) and first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "kind")
        given = f"unknown kind {first['ctx']['tag']!r}; " if first["type"] == "union_tag_invalid" else ""
        message = f"{given}choose one of {', '.join(TARGET_KINDS)}"
    elif loc[:1] == ("target",) and len(loc) > 1 and loc[1] in TARGET_KINDS:
        loc = (loc[0], *loc[2:])
    return loc, ".".join(str(p) for p in loc) or "(plan)", message


class ObjectTargetSection(_Section):
    """`target` in a plan given to `aisec.assess`: the model is the object passed, so the section says only how
    it takes input (inferred from the data when left out), its device, and for the probes that retrain it how
    to build an untrained one (`factory`: a function, or `package.module:function`). `kind` is set by
    aisec.assess from the object."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    kind: Literal["torch", "sklearn", "onnx", "callable", "target"]
    input: InputSection | None = None
    device: str | None = None
    factory: Callable[[], Any] | Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = (
        None
    )


class ObjectTrainingSection(_Section):
    """`training` in a plan given to `aisec.assess`: as in a plan file, but `data` may also be the training set
    itself (converted to `LabelledData` by aisec.assess) and `recipe` a function."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    data: Any  # DataSection | LabelledData; LabelledData is imported only when given (it imports torch)
    recipe: Callable[..., Any] | Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = (
        None
    )
    recipe_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return DataSection.model_validate(value)
        from aisec.data.dataset import LabelledData

        if isinstance(value, (DataSection, LabelledData)):
            return value
        raise ValueError(f"a plan file's data section, (x, y) or LabelledData, not {type(value).__name__}")


class ObjectPlan(Plan):
    """A plan given to `aisec.assess` as a mapping: the keys of a plan file, the model and data being objects.
    The cross-section checks of `Plan` apply unchanged (they read `target.kind` and `training`)."""

    target: ObjectTargetSection  # type: ignore[assignment]  # the model is an object, not a file
    data: None = None  # type: ignore[assignment]  # the data is x and y
    training: ObjectTrainingSection | None = None  # type: ignore[assignment]


S = TypeVar("S", bound=BaseModel)


def validated_section(section: type[S], settings: Mapping[str, Any], where: str) -> S:
    """One plan section built from `settings` (a command line's choices); PlanError "<where>: field: message"."""
    try:
        return section.model_validate(dict(settings))
    except ValidationError as e:
        _, field, message = _first_error(e)
        raise PlanError(f"{where}: {field}: {message}") from None


def validate_plan(mapping: Mapping[str, Any]) -> ObjectPlan:
    """A plan mapping (with `target.kind` set) validated as a plan file is; PlanError "plan: field: message"."""
    try:
        return ObjectPlan.model_validate(mapping)
    except ValidationError as e:
        _, field, message = _first_error(e)
        raise PlanError(f"plan: {field}: {message}") from None


def _tracking_uri(uri: str, base: Path) -> str:
    """A SQLite tracking store with a relative path taken from the plan's folder, as the plan's other files are
    (`sqlite:///mlflow.db` beside the plan); any other URI as it is."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(base / uri[len(prefix) :])
    return uri


def _located(section: TargetSection | HttpTargetSection, base: Path) -> TargetSection | HttpTargetSection:
    """A target section with its model file taken from the plan's folder (a served model has none)."""
    if isinstance(section, TargetSection):
        return section.model_copy(update={"path": base / section.path})
    return section


def _resolved(section: DataSection, base: Path) -> DataSection:
    return section.model_copy(update={"path": base / section.path if section.path else None})


def _line_of(node: Any, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest YAML node on the path `loc` (the mapping's line if the key is missing)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                return line
            key = next(k for k, v in node.value if v is match)
            line, node = key.start_mark.line + 1, match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
