"""Baseline for bench_score.py: plain fastai load_learner + learn.tta on every file, one process."""

import json
import sys
from pathlib import Path

import torch
from fastai.vision.all import load_learner  # what a notebook imports


def main(model_dir: str, images: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    learn = load_learner(Path(model_dir) / "export.pkl", cpu=True)
    files = sorted(str(p) for p in Path(images).iterdir())
    dl = learn.dls.test_dl(files, bs=64)
    with learn.no_bar():
        probs, _ = learn.tta(dl=dl, n=4, beta=0.25)
    print(json.dumps({"n": len(files), "mean_max_prob": float(probs.max(1).values.mean())}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
