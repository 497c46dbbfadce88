"""Certification benchmark: aisec's bound propagation (IBP, CROWN) against IBM ART's interval and zonotope
certifiers, in one process, on the same models, samples and budgets.

Models: a digits CNN that ART's converters accept (Conv2d-ReLU-Conv2d-ReLU-Flatten-Linear-ReLU-Linear; ART
rejects the demo CNN's MaxPool2d and infers the reshape itself, so it gets the same layer objects without the
Flatten module), trained by aisec with IBP at eps 0.1 (Gowal et al. 2018: `train_ibp`, 30 epochs, Adam lr
1e-3) and plainly (`fit`). For each model and budget, the first --samples test digits are certified by

- aisec `certify(..., method="ibp")` and `certify(..., method="crown")`, all samples in one batch;
- ART `PyTorchIBPClassifier.predict_intervals(x, bounds=eps, limits=[0, 1])` in one batch, then its `certify`;
- ART `PytorchDeepZ`: per sample, the zonotope of the eps-box clipped to [0, 1] (centre and one error term per
  feature, what ART's `pre_process` builds; that function fails under numpy 2) then `certify` against the
  model's prediction, counted only where the prediction is right (as ART's notebook does).

Seconds are the median over --repeats runs (IBP, ours and ART's, over five times as many; DeepZ, one sample at a
time in numpy, over --deepz-repeats).
"ratio" is ART's time over ours for the pair (ART IBP vs our IBP, DeepZ vs our CROWN); "ART only" counts
points ART certifies that ours does not.

    .venv/bin/python bench/robustness_certification.py                 # about 5 minutes on 2 busy CPU cores
    .venv/bin/python bench/robustness_certification.py --quick         # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from aisec.core.seeding import build_model
from aisec.core.training import TrainingConfig, accuracy, fit
from aisec.data.builtin import load_builtin
from aisec.defend.robustness.certification.bounds import certify, train_ibp

T = TypeVar("T")


def art_cnn() -> nn.Module:
    """A digits CNN of the layers ART's IBP and DeepZ converters accept (plus the Flatten they infer)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


class WithoutFlatten(nn.Module):
    """The same layer objects minus nn.Flatten, flattening before the first Linear as ART's converters infer;
    its children are in execution order, which is how ART reads a model."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        for i, layer in enumerate(layer for layer in model if not isinstance(layer, nn.Flatten)):
            self.add_module(str(i), layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
        return x


def _median_seconds(run: Callable[[], T], repeats: int) -> tuple[T, float]:
    """The last result of `repeats` runs and their median wall time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _art_certifiers(model: nn.Sequential) -> tuple[object, object]:
    """ART's interval and zonotope certifiers of `model` (built once, outside the timings), after checking that
    ART's converted model computes what ours does: otherwise the comparison means nothing."""
    from art.estimators.certification.deep_z import PytorchDeepZ
    from art.estimators.certification.interval import PyTorchIBPClassifier

    settings = dict(loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ibp = PyTorchIBPClassifier(model=WithoutFlatten(model), device_type="cpu", **settings)
        deepz = PytorchDeepZ(model=WithoutFlatten(model), device_type="cpu", **settings)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(x).numpy()
    for clf in (ibp, deepz):
        clf.model.set_forward_mode("concrete")
        assert np.allclose(clf.predict(x.numpy()), ours, atol=1e-4), "ART's converted model differs from ours"
    return ibp, deepz


def _art_ibp(clf: Any, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    clf.model.set_forward_mode("abstract")
    intervals = clf.predict_intervals(x=x, bounds=eps, limits=[0.0, 1.0], batch_size=len(x))
    return clf.certify(intervals, y)


def _art_deepz(clf: Any, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    certified = np.zeros(len(x), dtype=bool)
    for i in range(len(x)):
        clf.model.set_forward_mode("concrete")
        prediction = int(np.argmax(clf.predict(x[i : i + 1])))
        clf.model.set_forward_mode("abstract")
        # the box [x - eps, x + eps] within [0, 1] as a zonotope: its centre and one error term per feature
        # (what ART's pre_process builds; it fails under numpy 2 assigning a 1-element array to a scalar)
        lo, hi = np.clip(x[i] - eps, 0, 1), np.clip(x[i] + eps, 0, 1)
        terms = np.diag(((hi - lo) / 2).ravel()).reshape(x[i].size, *x[i].shape)
        ok = clf.certify(cent=np.expand_dims((lo + hi) / 2, 0), eps=terms, prediction=prediction)
        certified[i] = bool(ok) and prediction == y[i]
    return certified


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=540, help="the first test digits (540: all of them)")
    parser.add_argument("--repeats", type=int, default=3, help="CROWN and ART IBP; IBP runs 5x as many")
    parser.add_argument("--deepz-repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="50 samples, one repeat, 10 training epochs")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.repeats = 50, 1
    torch.set_num_threads(args.threads)
    split = load_builtin("digits", seed=0)
    epochs = 10 if args.quick else 30
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    ibp_model = train_ibp(
        build_model(art_cnn, args.seed),
        split.train,
        0.1,
        TrainingConfig(epochs=epochs, lr=1e-3),
        generator=gen,
    ).model
    ibp_train = time.perf_counter() - start
    plain_model = fit(build_model(art_cnn, args.seed), split.train, seed=args.seed, epochs=epochs)
    x, y = split.test.x[: args.samples], split.test.y[: args.samples]
    xn, yn = x.numpy(), y.numpy()
    print(f"# threads={args.threads} torch={torch.__version__} samples={len(x)} seed={args.seed}")
    print(
        f"# IBP-trained CNN: clean accuracy {accuracy(ibp_model, split.test):.3f}, trained in {ibp_train:.1f} s;"
    )
    print(f"# plainly trained CNN: clean accuracy {accuracy(plain_model, split.test):.3f}")
    print()
    print("| model | eps | certifier | certified | seconds | ratio (ART / ours) | ART only |")
    print("|---|---|---|---|---|---|---|")
    for name, model, budgets in (
        ("IBP-trained", ibp_model, (0.05, 0.1)),
        ("plain", plain_model, (0.01, 0.02)),
    ):
        art_ibp_clf, art_deepz_clf = _art_certifiers(model)
        for eps in budgets:
            fast = 5 * args.repeats  # IBP takes milliseconds: more repeats against a busy machine's noise
            ours_ibp, t_ibp = _median_seconds(
                functools.partial(certify, model, x, y, eps, "ibp", batch_size=len(x)), fast
            )
            ours_crown, t_crown = _median_seconds(
                functools.partial(certify, model, x, y, eps, "crown", batch_size=len(x)), args.repeats
            )
            art_ibp, t_art_ibp = _median_seconds(functools.partial(_art_ibp, art_ibp_clf, xn, yn, eps), fast)
            art_z, t_art_z = _median_seconds(
                functools.partial(_art_deepz, art_deepz_clf, xn, yn, eps), args.deepz_repeats
            )
            ibp_set, crown_set = ours_ibp.certified.numpy(), ours_crown.certified.numpy()
            rows = (
                ("aisec IBP", int(ibp_set.sum()), t_ibp, "", ""),
                ("aisec CROWN", int(crown_set.sum()), t_crown, "", ""),
                ("ART PyTorchIBPClassifier", int(art_ibp.sum()), t_art_ibp, f"{t_art_ibp / t_ibp:.1f}",
                 str(int((art_ibp & ~ibp_set).sum()))),
                ("ART PytorchDeepZ", int(art_z.sum()), t_art_z, f"{t_art_z / t_crown:.1f}",
                 str(int((art_z & ~crown_set).sum()))),
            )  # fmt: skip
            for certifier, count, seconds, ratio, art_only in rows:
                print(
                    f"| {name} | {eps:g} | {certifier} | {count} / {len(x)} | {seconds:.3f} | {ratio} | {art_only} |"
                )


if __name__ == "__main__":
    main()
