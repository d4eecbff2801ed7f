"""Which criterion should fit the temperature: the ECE or the negative log-likelihood? Decided on
the validation split alone: it is cut in random halves; T is fitted on one half by each
criterion and the ECE measured on the other, both ways round, for several cuts.

    CIFAR100_ARCHIVE=path/to/cifar-100-python.tar.gz CIFAR100_VERIFY=0 \\
        python benchmarks/calibration_objectives.py [--model models/cifar100_third_cnn.keras] [--cuts 5]

The test set is not read. A model whose temperature is folded in gives the same comparison as
before the fold: each criterion's T composes with the folded one.
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cifar100cnn import artifacts, calibration, environment, evaluation  # noqa: E402
from cifar100cnn.inference import predict_in_batches  # noqa: E402

OBJECTIVES = ("ece", "nll")


def held_out_ece(y, proba, cuts, seed=0):
    """Per objective, the held-out ECE of each fit: ``{objective: [ece, ...]}`` (2 per cut)."""
    rng = np.random.default_rng(seed)
    found = {objective: [] for objective in OBJECTIVES}
    for _ in range(cuts):
        order = rng.permutation(len(y))
        halves = order[:len(y) // 2], order[len(y) // 2:]
        for fit, score in (halves, halves[::-1]):
            for objective in OBJECTIVES:
                temperature = calibration.fit_temperature(y[fit], proba[fit], objective)
                found[objective].append(evaluation.expected_calibration_error(
                    y[score], calibration.scale(proba[score], temperature)))
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "cifar100_third_cnn.keras"))
    parser.add_argument("--cuts", type=int, default=5, help="random halvings (default 5)")
    args = parser.parse_args(argv)
    archive, verify = environment.archive_settings()
    validation = calibration.validation_split("cifar100", archive, verify)
    if validation is None:
        return 1
    x_val, y_val = validation
    proba = predict_in_batches(artifacts.load_model(args.model), x_val, 500, "validation")
    found = held_out_ece(np.asarray(y_val), proba, args.cuts)
    wins = sum(e < n for e, n in zip(found["ece"], found["nll"]))
    print(f"{os.path.basename(args.model)}, {len(y_val):,} validation images, {args.cuts} random "
          f"halvings ({2 * args.cuts} fits): held-out ECE with T fitted by the ECE "
          f"{np.mean(found['ece']):.4f}, by the NLL {np.mean(found['nll']):.4f}; "
          f"the ECE's lower in {wins} of {2 * args.cuts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
