"""Which temperature scaling calibrates TTA better: one temperature on the served (TTA-blended)
probabilities, or one on every pass's logits before the blend? Cross-fitted on a held-out labeled set.

    python bench/calibration_modes.py MODEL_DIR LABELED_CSV [--folds 2] [--seed 0]

(LABELED_CSV's file names are read relative to the image root the model was trained on, as
export.pkl's DataBlock does: e.g. the sample data's test_labels.csv.)

Runs the artifact's export.pkl through scoring's own TTA (train/validation.py) on the labeled set,
recording every pass's logits; for each fold fits both temperatures on the other folds and reports
NLL and ECE (15 bins) on the held-out fold, next to the uncalibrated blend. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.learner import load_learner
from scipy.optimize import minimize_scalar
from scipy.special import softmax

from vehicle_ray.artifact import EXPORT_PKL, MODEL_JSON
from vehicle_ray.calibration import TEMPERATURE_BOUNDS, apply_temperature, ece, fit_temperature, nll
from vehicle_ray.data import FN, LABEL
from vehicle_ray.train.validation import validation_set
from vehicle_ray.tta import TTASettings


def passes(model_dir: Path, csv: Path, tta: TTASettings):
    """(blended probabilities, plain logits (N, K), augmented logits (n, N, K), targets)."""
    learn = load_learner(model_dir / EXPORT_PKL, cpu=True)
    labels = pd.read_csv(csv, dtype=str)
    items = pd.DataFrame({FN: labels.iloc[:, 0], LABEL: labels.iloc[:, 1]})  # the learner's ColReaders
    dl = learn.dls.test_dl(items, with_labels=True)
    recorded: list[torch.Tensor] = []

    @torch.inference_mode()
    def forward(x):
        recorded.append(learn.model.eval()(torch.as_tensor(x)).float())
        return recorded[-1]

    v = validation_set(learn, tta, forward, dl)
    plain = torch.cat(recorded[0::2]).numpy()
    aug = torch.cat([r.view(tta.n, -1, r.shape[-1]) for r in recorded[1::2]], dim=1).numpy()
    return v.probs, plain, aug, v.targets


def per_pass_blend(plain: np.ndarray, aug: np.ndarray, beta: float, t: float) -> np.ndarray:
    """The blend of passes whose logits were each divided by t (fastai's lerp form)."""
    return beta * softmax(plain / t, axis=-1) + (1 - beta) * softmax(aug / t, axis=-1).mean(0)


def fit_per_pass(plain, aug, targets, beta) -> float:
    def loss(log_t):
        return nll(per_pass_blend(plain, aug, beta, float(np.exp(log_t))), targets)

    return float(np.exp(minimize_scalar(loss, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded").x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("csv", type=Path)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    meta = json.loads((args.model / MODEL_JSON).read_text())
    tta = TTASettings(meta["tta"]["n"], meta["tta"]["beta"])
    blended, plain, aug, targets = passes(args.model, args.csv, tta)
    assert np.allclose(per_pass_blend(plain, aug, tta.beta, 1.0), blended, atol=1e-5)  # same blend as scoring
    folds = np.random.default_rng(args.seed).permutation(len(targets)) % args.folds
    scores = {m: {"nll": [], "ece": [], "temperature": []} for m in ("none", "blended", "per_pass")}
    for k in range(args.folds):
        fit, held = folds != k, folds == k
        t_blend = fit_temperature(blended[fit], targets[fit])
        t_pass = fit_per_pass(plain[fit], aug[:, fit], targets[fit], tta.beta)
        served = {
            "none": (blended[held], 1.0),
            "blended": (apply_temperature(blended[held], t_blend), t_blend),
            "per_pass": (per_pass_blend(plain[held], aug[:, held], tta.beta, t_pass), t_pass),
        }
        for mode, (probs, t) in served.items():
            scores[mode]["nll"].append(nll(probs, targets[held]))
            scores[mode]["ece"].append(ece(probs, targets[held]))
            scores[mode]["temperature"].append(t)
    report = {mode: {k: round(float(np.mean(v)), 4) for k, v in s.items()} for mode, s in scores.items()}
    print(
        json.dumps({"images": int(len(targets)), "tta": {"n": tta.n, "beta": tta.beta}, "folds": args.folds, **report})
    )


if __name__ == "__main__":
    main()
