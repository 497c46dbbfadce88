"""`aisec demo`: train the digits CNN, write a plan for it, assess it through that plan, write the report.

The plan runs every probe (evasion, extraction, inversion, membership inference, poisoning, backdoors) with
defences measured beside the model as served (output hardening, DP-SGD, gradient shaping, a fast-adversarially
trained model): at small settings by default, in about two minutes on two CPU cores; thoroughly with `full=True`
(`aisec demo --full`), which adds PGD-AT, TRADES, IBP training, certification, randomised smoothing, input
detectors, input transformations and NULL labelling.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from aisec.assessment.finding import Assessment
from aisec.core.progress import Progress

_TARGET = {
    "kind": "torch",
    "factory": "aisec.demo.models:digits_cnn",
    "path": "model/digits_cnn.pt",
    "input": {"shape": [1, 8, 8], "num_classes": 10, "lower": 0.0, "upper": 1.0},
}
# The model's training set and recipe: the members for membership inference, the recipe for the models the
# probes retrain (shadow models, poisoned models, defences).
_TRAINING = {"data": {"builtin": "digits", "split": "train"}, "recipe": "aisec.core.training:fit"}
_POLICY = {
    "min_clean_accuracy": 0.95,
    "min_robust_accuracy": {0.05: 0.5},
    "max_membership_auc": 0.6,
    "max_extraction_agreement": 0.95,
}
_NAME = "digits CNN under evasion, extraction, inversion, membership inference, poisoning and backdoors"

# The two-minute demo: every probe and every defence, at small settings (fewer samples, budgets, shadow models,
# rates and triggers).
DEMO_PLAN = {
    "name": f"Demo: {_NAME}",
    "seed": 0,
    "target": _TARGET,
    "data": {"builtin": "digits", "split": "test", "samples": 300},
    "threat_model": {
        "knowledge": "white_box",
        "norm": "linf",
        "budgets": [0.05, 0.1, 0.2],
        "query_budget": 1000,  # Square's queries; 2000 finds one more adversarial example of 300 at 0.1
    },
    "probes": {
        # FAB-T is half the cascade's time and fooled none of the 300 digits that APGD left (`--full` runs it)
        "evasion": {"examples": 4, "attacks": ["apgd-ce", "apgd-t", "square"]},
        "extraction": {"query_budget": 500, "strategies": ["natural"]},
        "inversion": {"steps": 100},
        "membership": {"records": 100, "shadows": 8},
        "poisoning": {"attacks": ["random_flip"], "rates": [0.1], "folds": 3},
        "backdoor": {"triggers": ["patch"], "rates": [0.05], "repair": ["retrain"]},
    },
    "training": _TRAINING,
    "defences": {
        "output_hardening": [{"label_only": True}],
        # one delta for the victim and every shadow model: Opacus's noise search then runs once, not per shadow
        "dp_training": {"target_epsilon": 4.0, "delta": 1e-5, "epochs": 10, "lr": 0.05, "batch_size": 128},
        "gradient_shaping": {},
        # one hardened model, attacked by the whole evasion probe: fast adversarial training costs about two
        # plain trainings (PGD-AT, TRADES and certification are in `--full`)
        "adversarial_training": [{"method": "fast", "eps": 0.1}],
    },
    "policy": _POLICY,
}

# `aisec demo --full`: the thorough assessment (every attack, trigger and rate of the probes' defaults).
FULL_DEMO_PLAN = {
    "name": f"Demo (full): {_NAME}",
    "seed": 0,
    "target": _TARGET,
    "data": {"builtin": "digits", "split": "test", "samples": 500},
    "threat_model": {
        "knowledge": "white_box",
        "norm": "linf",
        "budgets": [0.03, 0.05, 0.1, 0.15, 0.2],
        "query_budget": 5000,
    },
    "probes": {
        "evasion": {"examples": 6},
        "extraction": {"query_budget": 1000},
        "inversion": {},
        "membership": {"records": 200, "shadows": 16},
        "poisoning": {"rates": [0.05, 0.1]},
        "backdoor": {},
    },
    "training": _TRAINING,
    "defences": {
        "output_hardening": [{"top_k": 1, "decimals": 2}, {"label_only": True}],
        "dp_training": {"target_epsilon": 4.0, "delta": 1e-5, "epochs": 20, "lr": 0.05, "batch_size": 128},
        "gradient_shaping": {},
        "adversarial_training": [
            {"method": "pgd", "eps": 0.1},
            {"method": "trades", "eps": 0.1, "beta": 6},
            {"method": "fast", "eps": 0.1},
            {"method": "ibp", "eps": 0.1, "lr": 0.001},  # IBP training is tested at lr 1e-3 to 3e-3
        ],
        "randomized_smoothing": {"sigma": 0.25, "n0": 100, "n": 10000, "alpha": 0.001},
        "certification": {"method": "crown"},
        "input_detectors": ["feature_squeezing", "mahalanobis"],
        "input_transforms": [{"bit_depth": 3}, {"median": 2}],
        "null_labelling": {"eps": 0.1},
    },
    "policy": _POLICY,
}


def prepare_demo(workdir: Path, *, seed: int = 0, full: bool = False) -> Path:
    """Train the demo model, save its weights, its clean test split (`clean.npz`, arrays x and y) and the plan
    (DEMO_PLAN, or FULL_DEMO_PLAN) under `workdir`; return the plan's path."""
    import numpy as np
    import torch

    from aisec.core.seeding import build_model
    from aisec.core.training import fit
    from aisec.data.builtin import load_builtin
    from aisec.demo.models import digits_cnn

    split = load_builtin("digits", seed=seed)
    model = fit(build_model(digits_cnn, seed), split.train, seed=seed)
    (workdir / "model").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), workdir / "model" / "digits_cnn.pt")
    # the clean data `aisec inspect` checks the model file with (make demo), as a user would hold it
    np.savez(workdir / "clean.npz", x=split.test.x.numpy(), y=split.test.y.numpy())
    plan_path = workdir / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(FULL_DEMO_PLAN if full else DEMO_PLAN, sort_keys=False))
    return plan_path


def run_demo(
    workdir: Path, progress: Progress | None = None, *, full: bool = False
) -> tuple[Path, Assessment]:
    """Everything `make demo` does short of writing the report: returns the plan's path and the assessment."""
    from aisec.assessment.plan import load_plan
    from aisec.assessment.runner import run_plan

    plan_path = prepare_demo(workdir, full=full)
    plan, digest = load_plan(plan_path)
    return plan_path, run_plan(plan, plan_path=plan_path, plan_sha256=digest, progress=progress)
