"""Harden a model and prove it: adversarial training, certification and randomised smoothing as library calls,
then the same controls measured by aisec's red team in an assessment (docs/robustness.md).

    .venv/bin/python examples/robustness_controls.py [OUTPUT_FOLDER] [--epochs N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import aisec
from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, accuracy, fit
from aisec.data.builtin import load_builtin
from aisec.defend.robustness import certify, smoothing_certify
from aisec.defend.robustness.adversarial_training import AdversarialTrainingConfig, adversarial_train
from aisec.defend.robustness.certification.smoothing import train_with_noise
from aisec.demo.models import digits_cnn


def main(output: Path, epochs: int) -> None:
    digits = load_builtin("digits", seed=0)
    x, y = digits.test.x[:200], digits.test.y[:200]
    config = TrainingConfig(epochs=epochs)

    # 1. PGD adversarial training at L-inf 0.1 (budgets in input units: eps 8 would be refused on [0, 1] data)
    hardened = adversarial_train(
        build_model(digits_cnn, 0),
        digits.train,
        AdversarialTrainingConfig("pgd", eps=0.1),
        config,
        generator=torch.Generator().manual_seed(0),
    )
    print(f"PGD-AT: clean accuracy {accuracy(hardened.model, digits.test):.3f}, {hardened.seconds:.1f} s")
    print(f"  overfitting guard: {hardened.guard.message if hardened.guard else 'off'}")

    # 2. What can be proven: CROWN bound propagation at L-inf 0.02 on the plainly trained model
    plain = fit(build_model(digits_cnn, 0), digits.train, seed=0, epochs=epochs)
    proof = certify(plain, x, y, eps=0.02, method="crown")
    print(f"CROWN: {proof.certified_accuracy:.3f} of {len(y)} certified at eps 0.02 ({proof.seconds:.1f} s)")

    # 3. Randomised smoothing: a certified L2 radius for a model trained with Gaussian noise
    noisy = train_with_noise(
        build_model(digits_cnn, 0), digits.train, 0.25, config, generator=torch.Generator().manual_seed(0)
    ).model
    smooth = smoothing_certify(noisy, x[:50], sigma=0.25, n=1000, generator=torch.Generator().manual_seed(1))
    print(f"smoothing: {smooth.certified_accuracy(y[:50], 0.5):.3f} of 50 certified at L2 radius 0.5")

    # 4. The same controls in an assessment: each attacked by the evasion probe, the models saved beside the report
    plan = {
        "target": {"input": {"shape": [1, 8, 8], "num_classes": 10}, "factory": digits_cnn},
        "threat_model": {"budgets": [0.05, 0.1], "query_budget": 500},
        "probes": {"evasion": {"attacks": ["apgd-ce", "apgd-t", "square"]}},
        "training": {"data": digits.train},
        "defences": {
            "adversarial_training": [{"method": "fast", "eps": 0.1, "epochs": epochs}],
            "certification": {"method": "crown", "samples": 100},
            "input_transforms": [{"bit_depth": 3}],
        },
    }
    result = aisec.assess(plain, x, y, plan=plan)
    for finding in result.findings:
        print(f"{finding.rule_id} [{finding.severity.value}] {finding.message}")
    paths = result.save(output)
    print(f"report: {paths['html']}; models: {sorted(p.name for p in (output / 'models').iterdir())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=Path("out/robustness-example"))
    parser.add_argument(
        "--epochs", type=int, default=30, help="training epochs of every model (30: the demo's)"
    )
    arguments = parser.parse_args()
    main(arguments.output, arguments.epochs)
