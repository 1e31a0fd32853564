"""Distributed fine-tuning on real Ray Train CPU workers with real fastai."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.conftest import LEARNED_ACCURACY, run_cli
from vehicle_ray.artifact import (
    EXPORT_PKL,
    METRICS_CSV,
    MODEL_JSON,
    ONNX,
    ONNX_INT8,
    WEIGHTS,
    open_artifact,
)
from vehicle_ray.data import read_labeled_csv, split_indices
from vehicle_ray.network import load_torch_model
from vehicle_ray.recipe import load_recipe
from vehicle_ray.sample_data import write_sample_data

pytestmark = pytest.mark.slow


def _load_learner(model_dir):
    from fastai.learner import load_learner

    return load_learner(model_dir / EXPORT_PKL, cpu=True)


def single_process_validation(model_dir, data_dir, recipe) -> tuple[int, float, float]:
    """(images, accuracy, valid_loss) of the artifact's export.pkl over the run's validation split, in
    this process: what a multi-worker run reports must equal it (nothing sharded away or double counted)."""
    data = read_labeled_csv(data_dir / "train.csv", data_dir / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    learn = _load_learner(model_dir)
    valid = data.items.iloc[valid_idx]
    dl = learn.dls.test_dl([str(data_dir / "images" / f) for f in valid["fn"]], with_labels=False)
    probs, _ = learn.get_preds(dl=dl)
    targets = torch.tensor([learn.dls.vocab.o2i[label] for label in valid["label"]])
    accuracy = float((probs.argmax(1) == targets).float().mean())
    return len(valid), accuracy, float(torch.nn.functional.nll_loss(torch.log(probs), targets))


def test_two_workers_learn_and_write_complete_artifact(trained_model):
    art = open_artifact(trained_model, verify=(EXPORT_PKL, WEIGHTS, ONNX, ONNX_INT8, METRICS_CSV))
    meta = art.meta
    assert meta["metrics"]["accuracy"] >= LEARNED_ACCURACY, meta["metrics"]
    assert meta["classes"] == ["0", "1"] and meta["arch"] == "resnet18" and meta["input"]["size"] == 64
    assert meta["tta"] == {"n": 4, "beta": 0.25}
    assert set(meta["versions"]) >= {"torch", "fastai", "ray", "torchvision"}
    history = pd.read_csv(trained_model / METRICS_CSV)
    assert list(history["epoch"]) == list(range(1, 9))
    assert {"train_loss", "valid_loss", "accuracy", "error_rate", "stage", "seconds"} <= set(history.columns)
    assert history["valid_loss"].iloc[-1] < history["valid_loss"].iloc[0]


def test_export_pkl_and_safetensors_give_the_same_predictions(trained_model, sample_dir):
    learn = _load_learner(trained_model)
    files = sorted((sample_dir / "images").glob("*.jpg"))[:48]
    dl = learn.dls.test_dl(files)
    pickled, _ = learn.get_preds(dl=dl)
    learn.model = load_torch_model(open_artifact(trained_model))
    from_safetensors, _ = learn.get_preds(dl=dl)
    assert torch.allclose(pickled, from_safetensors, atol=1e-6)


def test_reported_metrics_cover_the_whole_validation_set(trained_model, sample_dir):
    """What the 2-worker run reported for its last epoch equals a single-process validation of the
    same weights over the full validation split: nothing was sharded away or double counted."""
    n, accuracy, valid_loss = single_process_validation(trained_model, sample_dir, load_recipe("tiny_cpu"))
    last = pd.read_csv(trained_model / METRICS_CSV).iloc[-1]
    assert n == 80
    assert accuracy == pytest.approx(last["accuracy"], abs=1e-6)
    assert valid_loss == pytest.approx(last["valid_loss"], rel=1e-3)


def test_calibration_saw_the_whole_validation_split_paired_with_its_labels(trained_model, sample_dir):
    """Both ranks scored a slice of the validation split for calibration and rank 0 gathered them: the
    plain pass's NLL before calibration equals this process's NLL over the whole split, which it
    would not with a slice missing, doubled, or out of order against the labels."""
    n, _, nll = single_process_validation(trained_model, sample_dir, load_recipe("tiny_cpu"))
    calibration = open_artifact(trained_model).meta["calibration"]
    assert calibration["validation_images"] == n == 80
    assert calibration["plain"]["nll_before"] == pytest.approx(nll, rel=1e-3, abs=1e-5)
    assert calibration["fitted_precision"] == "fp32"  # what it was fitted in, whatever scoring serves


def test_one_and_two_workers_both_learn(trained_model, sample_dir, tmp_path, ray_local):
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.driver import train

    one = train(
        TrainOptions(
            csv=sample_dir / "train.csv",
            images=sample_dir / "images",
            out=tmp_path / "one",
            workers=1,
            storage_path=str(tmp_path / "runs"),
        ),
        load_recipe("tiny_cpu"),
    )
    two = json.loads((trained_model / MODEL_JSON).read_text())["metrics"]
    assert one.metrics["accuracy"] >= LEARNED_ACCURACY
    assert abs(one.metrics["accuracy"] - two["accuracy"]) <= 0.08


STAGED_RECIPE = """
# The seed's schedule in miniature: pretrained body, frozen stage, unfreeze, discriminative-lr stage
arch = "resnet18"
pretrained = true
size = 32
bs = 16
valid_pct = 0.25
seed = 42
max_rotate = 10.0
metrics = ["accuracy", "error_rate"]

[[stages]]
epochs = 1
lr = 0.002
frozen = true

[[stages]]
epochs = 2
lr = 0.001

[[stages]]
epochs = 1
lr = 0.0001
lr_min = 0.00001
"""


def test_staged_recipe_on_two_workers_resumes_in_stage_two_then_rerun_resumes_too(tmp_path):
    """The seed's staged schedule (pretrained body from a weights file, frozen stage, unfreeze,
    discriminative lrs; DDP re-wrapped per fit with the frozen parameters excluded) on 2 gloo workers,
    a worker killed in stage 2, checkpoints every 3 epochs: the run resumes from the end of stage 1
    (epoch 2 had no checkpoint) and its metrics equal a single-process validation of the artifact."""
    import torchvision

    data = tmp_path / "data"
    write_sample_data(data, train=80, test=0, size=32, seed=5)  # small: this test is about control flow
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "weights.pth")
    (tmp_path / "staged.toml").write_text(STAGED_RECIPE)
    args = [
        "train",
        "--csv",
        str(data / "train.csv"),
        "--images",
        str(data / "images"),
        "--config",
        str(tmp_path / "staged.toml"),
        "--weights",
        str(tmp_path / "weights.pth"),
        "--workers",
        "2",
        "--checkpoint-every",
        "3",
        "--storage-path",
        str(tmp_path / "runs"),
        "--name",
        "crashy",
        "--max-failures",
        "1",
    ]
    # The Train controller registers a reported checkpoint when it next polls the workers (every 2 s by
    # default), and the reports a dead worker group had not handed over yet die with it. These epochs
    # take ~1-2 s, so the stage-1 checkpoint could still be unpolled when rank 1 dies after epoch 2;
    # the group then restarted from scratch (rightly: at-least-once) and this test failed now and then.
    # Polling every 0.1 s makes the registration happen within the epoch that follows it.
    env = {"VEHICLE_RAY_FAIL_AFTER_EPOCH": "2", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    r = run_cli(*args, "--out", str(tmp_path / "m"), env=env)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "injected failure on rank 1 after epoch 2" in log
    # The driver shows our epoch lines, not Ray Train's per-report INFO line or the warning the
    # placement-group cleaner logs every second without a dashboard.
    assert "Reporting training result" not in log and "Failed to query" not in log, log[-3000:]
    assert "resumed from checkpoint: stage 1, epoch 1 done (1 epochs in history)" in log, log[-3000:]
    history = pd.read_csv(tmp_path / "m" / METRICS_CSV)
    assert list(history["stage"]) == [1, 2, 2, 3] and list(history["epoch"]) == [1, 1, 2, 1]
    assert history["lr"].iloc[-1] < history["lr"].iloc[1]  # the discriminative stage's lower lrs
    meta = open_artifact(tmp_path / "m").meta
    assert meta["training"] == {
        "device": "cpu",
        "precision": "fp32",
        "loader_workers": 0,
        "pin_memory": False,
        "channels_last": False,
        "cudnn_benchmark": False,
        "workers": 2,
        "global_batch": 16,
        "per_worker_batch": 8,
        "batchnorm_batch": 16,
        "stage_lrs": [{"lr": 0.002}, {"lr": 0.001}, {"lr": 0.0001, "lr_min": 0.00001}],
    }
    n, accuracy, valid_loss = single_process_validation(tmp_path / "m", data, load_recipe(tmp_path / "staged.toml"))
    assert n == 20
    assert accuracy == pytest.approx(history["accuracy"].iloc[-1], abs=1e-6)
    assert valid_loss == pytest.approx(history["valid_loss"].iloc[-1], rel=1e-3)
    # A rerun with the same storage path and name continues from the last checkpoint (here: done).
    r = run_cli(*args, "--out", str(tmp_path / "m2"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resumed from checkpoint" in r.stdout + r.stderr
    assert "epoch 1/" not in r.stdout + r.stderr
    assert open_artifact(tmp_path / "m2").meta["model_sha256"] == meta["model_sha256"]


def test_lr_find_writes_plot_and_finite_suggestions(sample_dir, tmp_path, ray_local):
    from vehicle_ray.train.lr_find import find_lr

    found = find_lr(sample_dir / "train.csv", sample_dir / "images", tmp_path / "lr", load_recipe("tiny_cpu"))
    suggestions = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert suggestions == pytest.approx(found.__dict__)
    assert set(suggestions) == {"valley", "slide", "minimum", "steep"}
    assert all(math.isfinite(v) and 1e-8 < v < 10 for v in suggestions.values())
    with Image.open(tmp_path / "lr" / "lr_find.png") as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
        assert np.asarray(img.convert("L")).std() > 10  # a drawn plot, not a blank canvas


def test_offline_pretrained_weights_error_names_the_ways_out(sample_dir, tmp_path):
    r = run_cli(
        "train",
        "--csv",
        str(sample_dir / "train.csv"),
        "--images",
        str(sample_dir / "images"),
        "--config",
        "tiny_cpu",
        "--pretrained",
        "--out",
        str(tmp_path / "m"),
        env={"TORCH_HOME": str(tmp_path / "empty_torch_cache")},
    )
    assert r.returncode == 2
    assert "--weights" in r.stderr and "--no-pretrained" in r.stderr
    assert "Traceback" not in r.stderr


def test_int8_model_tracks_the_fp32_model(trained_model, sample_dir):
    """The calibrated int8 copy (used for TTA's passes on CPU) gives the same labels as the
    fp32 model and probabilities within a few hundredths, on plain and on augmented inputs."""
    from vehicle_ray.score.augment import AugmentSpec, FusedAugment
    from vehicle_ray.score.decode import decode_image
    from vehicle_ray.score.predictor import onnx_forward

    art = open_artifact(trained_model, verify=(ONNX, ONNX_INT8))
    fp32, int8 = onnx_forward(art.path(ONNX), 2), onnx_forward(art.path(ONNX_INT8), 2)
    augment = FusedAugment(AugmentSpec.from_recipe(art.meta["recipe"]), seed=0)
    files = sorted((sample_dir / "images").glob("*.jpg"))[:128]
    images = np.stack([decode_image(f.read_bytes(), art.size) for f in files])
    for passes in (augment.plain, augment.augmented):
        x = passes(images)
        p32, p8 = (torch.softmax(torch.from_numpy(f(x)), dim=-1) for f in (fp32, int8))
        assert (p32.argmax(1) == p8.argmax(1)).float().mean() >= 0.97
        assert (p32 - p8).abs().mean() <= 0.03
