"""Where the model actors run and at what precision (issue #18): the device follows the plan, never GPU
visibility; transform tensors follow the device; ONNX is refused on GPU actors; bf16 or fp16 by GPU
capability, recorded as it ran. CPU only, no Ray: the GPU side runs in bench/gpu_smoke.sh (rehearsed on
the CPU by tests/test_gpu_smoke.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.score.specs import model_spec
from vehicle_ray.device import gpu_precision
from vehicle_ray.errors import InputError
from vehicle_ray.score.model import ONNX_ON_GPU, pass_files, resolve_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import (
    actor_device,
    describe_precisions,
    ran_precisions,
    recorded_tta,
    tta_settings,
)
from vehicle_ray.score.predictor import Predictor, gpu_autocast_dtype, move_transform_tensors
from vehicle_ray.tta import TTASettings

SIZE = 32


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A real (untrained) resnet18 artifact at 32 px. Its ONNX files are stubs: these tests run the
    torch backend, which loads and verifies only the safetensors weights and model.json."""
    import vehicle_ray.train.artifact_writer as artifact_module
    from vehicle_ray.data import read_labeled_csv, split_indices
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.sample_data import write_sample_data
    from vehicle_ray.train.learner import build_dataloaders, build_learner

    out = tmp_path_factory.mktemp("device")
    write_sample_data(out / "train", train=64, test=0, size=SIZE, seed=1)
    recipe = load_recipe("tiny_cpu").with_overrides(size=SIZE)
    data = read_labeled_csv(out / "train" / "train.csv", out / "train" / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    (out / "model").mkdir()
    with pytest.MonkeyPatch.context() as mp:  # raising=False: if the names move, the real (slower) ones run
        mp.setattr(artifact_module, "export_onnx", lambda model, size, path: Path(path).write_bytes(b"stub"), False)
        mp.setattr(artifact_module, "quantize_onnx", lambda fp32, path, batches: Path(path).write_bytes(b"stub"), False)
        artifact_module.write_artifact(out / "model", learn, artifact_module.ArtifactContent(recipe, data.classes, []))
    return out / "model"


def decoded_batch(n: int = 3) -> dict[str, np.ndarray]:
    """What decode_batch hands the actor: uint8 NHWC images, one failed file among them."""
    images = np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    errors = np.array([""] * (n - 1) + ["broken"], dtype=object)
    return {"path": np.array([f"/x/{i}.jpg" for i in range(n)], dtype=object), "image": images, "error": errors}


@pytest.fixture
def gpu_visible(monkeypatch):
    """A CPU actor on a GPU node under Ray 2.60: CUDA looks available though the actor reserved none.
    Anything that then really touches CUDA fails here (this machine has no GPU driver)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("allow_pickle", [False, True], ids=["artifact", "pickle"])
def test_a_cpu_planned_actor_stays_on_cpu_when_a_gpu_is_visible(artifact, gpu_visible, allow_pickle):
    spec = resolve_model(artifact / "export.pkl" if allow_pickle else artifact, allow_pickle=allow_pickle)
    opts = ScoreOptions(backend="torch", tta_n=2)
    tta = tta_settings(spec, opts)
    # a Normalize with its stats on cuda (or a model moved there) would fail on this driverless machine
    predictor = Predictor(spec, tta, backend="torch", device=actor_device(opts.gpus_per_actor))
    rows = predictor(decoded_batch()).to_pydict()
    assert rows["error"] == [None, None, "broken"]
    assert all(abs(sum(p) - 1) < 1e-4 for p in rows["probabilities"][:2]) and rows["probabilities"][2] is None
    assert set(rows["tta_plain_precision"]) == set(rows["tta_aug_precision"]) == {"fp32"}
    assert not torch.cuda.is_initialized()


def test_the_default_device_is_cpu_whatever_is_visible(artifact, gpu_visible):
    spec = resolve_model(artifact)
    predictor = Predictor(spec, tta_settings(spec, ScoreOptions(backend="torch")), backend="torch")
    assert predictor(decoded_batch()).to_pydict()["error"] == [None, None, "broken"]
    assert not torch.cuda.is_initialized()


def test_a_gpu_planned_actor_without_a_gpu_says_so(artifact):
    spec = resolve_model(artifact)
    with pytest.raises(RuntimeError, match="planned for cuda"):
        Predictor(spec, TTASettings(), backend="torch", device="cuda")


def test_the_artifact_transforms_are_built_on_cpu_even_with_a_gpu_visible(artifact, gpu_visible):
    """train.learner's Normalize.from_stats(cuda=True) would put the stats on cuda:0 (and fail here)."""
    from vehicle_ray.artifact import open_artifact
    from vehicle_ray.network import artifact_batch_transforms

    transforms = artifact_batch_transforms(open_artifact(artifact).meta)
    norms = [t for t in transforms if type(t).__name__ == "Normalize"]
    assert norms and all(t.mean.device.type == t.std.device.type == "cpu" for t in norms)


def all_tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor reachable from a transform's attributes (through containers and nested transforms)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        return [obj]
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in all_tensors(v, seen)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in all_tensors(v, seen)]
    if hasattr(obj, "__dict__") and hasattr(obj, "encodes"):
        return [t for v in vars(obj).values() for t in all_tensors(v, seen)]
    return []


def test_every_transform_tensor_moves_to_the_planned_device():
    """fastai's real batch transforms (the pickle path's learn.dls.after_batch and the artifact's):
    none has a `.to`; Normalize keeps mean/std as tensors. "meta" stands in for cuda."""
    from fastai.data.transforms import IntToFloatTensor, Normalize
    from fastai.vision.augment import aug_transforms
    from fastai.vision.core import imagenet_stats

    transforms = [
        IntToFloatTensor(),
        *aug_transforms(max_rotate=10.0, max_warp=0.2, max_zoom=1.1, max_lighting=0.2),
        Normalize.from_stats(*imagenet_stats, cuda=False),
    ]
    before = [t for tf in transforms for t in all_tensors(tf)]
    assert len(before) >= 2  # at least Normalize's mean and std
    assert move_transform_tensors(transforms, "meta") == len(before)
    after = [t for tf in transforms for t in all_tensors(tf)]
    assert len(after) == len(before) and all(t.device.type == "meta" for t in after)
    norm = transforms[-1]
    assert norm.mean.device.type == norm.std.device.type == "meta" and norm.mean.shape == (1, 3, 1, 1)


def test_tensors_in_containers_and_nested_transforms_move_too():
    from fastai.data.transforms import Normalize

    class Holder:
        def __init__(self):
            self.stats = [torch.zeros(2), 3]
            self.named = {"a": torch.ones(1)}
            self.pair = (torch.ones(1), "x")
            self.inner = Normalize(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))

        def encodes(self, x):
            return x

    h = Holder()
    stats = h.stats
    assert move_transform_tensors([h], torch.device("meta")) == 5
    assert h.stats is stats and h.stats[1] == 3 and h.pair[1] == "x"  # lists in place, others rebuilt
    assert all(t.device.type == "meta" for t in all_tensors(h))


def test_the_device_follows_the_plan():
    assert [actor_device(g) for g in (0, 0.0, 0.25, 1, 2)] == ["cpu", "cpu", "cuda", "cuda", "cuda"]


@pytest.mark.parametrize(
    "capability, dtype, name",
    [
        ((7, 0), torch.float16, "fp16"),  # V100
        ((7, 5), torch.float16, "fp16"),  # T4
        ((6, 1), torch.float16, "fp16"),  # P4 / P40
        ((8, 0), torch.bfloat16, "bf16"),  # A100
        ((8, 9), torch.bfloat16, "bf16"),  # L4
        ((9, 0), torch.bfloat16, "bf16"),  # H100
        ((10, 0), torch.bfloat16, "bf16"),  # B200
    ],
)
def test_gpu_precision_by_capability(capability, dtype, name):
    assert gpu_autocast_dtype(capability) == dtype
    assert gpu_precision(capability) == name


def test_a_gpu_actor_records_the_precision_it_ran():
    planned = tta_settings(model_spec(), ScoreOptions(gpus_per_actor=1))
    assert (planned.plain_precision, planned.aug_precision) == ("bf16", "bf16")
    t4 = ran_precisions(planned, gpu_precision((7, 5)))
    assert (t4.plain_precision, t4.aug_precision) == ("fp16", "fp16")
    assert t4.as_columns()["tta_plain_precision"] == "fp16"
    no_tta = ran_precisions(tta_settings(model_spec(), ScoreOptions(gpus_per_actor=1, no_tta=True)), "fp16")
    assert (no_tta.plain_precision, no_tta.aug_precision) == ("fp16", "none")
    cpu = tta_settings(model_spec(), ScoreOptions())  # CPU plans are untouched: int8 / fp32 as before
    assert (cpu.plain_precision, cpu.aug_precision) == ("int8", "int8")


def test_the_summary_records_what_the_actors_ran():
    planned = tta_settings(model_spec(), ScoreOptions(gpus_per_actor=1))
    assert recorded_tta(planned, {}) == planned  # nothing scored: the plan
    one = recorded_tta(planned, {"tta_plain_precision": {"fp16"}, "tta_aug_precision": {"fp16"}})
    assert (one.plain_precision, one.aug_precision) == ("fp16", "fp16")
    mixed = recorded_tta(planned, {"tta_plain_precision": {"fp16", "bf16"}, "tta_aug_precision": {"bf16", "fp16"}})
    assert (mixed.plain_precision, mixed.aug_precision) == ("bf16+fp16", "bf16+fp16")


def test_the_log_line_says_gpu_precision_is_chosen_by_capability():
    assert describe_precisions(tta_settings(model_spec(), ScoreOptions(gpus_per_actor=0.5))) == (
        "bf16 or fp16 by GPU capability"
    )
    assert describe_precisions(tta_settings(model_spec(), ScoreOptions())) == "int8"
    assert (
        describe_precisions(tta_settings(model_spec(), ScoreOptions(emit_plain=True))) == "plain fp32, augmented int8"
    )


@pytest.mark.parametrize("backend, gpus", [("onnx", 1.0), ("onnx", 0.5)])
def test_onnx_on_gpu_actors_is_bad_usage(backend, gpus):
    opts = ScoreOptions(backend=backend, gpus_per_actor=gpus)
    with pytest.raises(InputError, match="--backend onnx runs on CPU actors; use --backend torch"):
        tta_settings(model_spec(), opts)
    with pytest.raises(InputError, match="--backend onnx runs on CPU actors"):
        pass_files(model_spec(), TTASettings(aug_precision="bf16", plain_precision="bf16"), backend, True)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_gpu_actors_run_torch_weights(backend):
    tta = tta_settings(model_spec(), ScoreOptions(backend=backend, gpus_per_actor=1))
    assert pass_files(model_spec(), tta, backend, True) == ("model.safetensors", "model.safetensors")


def test_the_cli_refuses_onnx_on_gpu_actors_in_one_line_before_ray(artifact, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import vehicle_ray.score.driver as driver
    from vehicle_ray.cli import cli

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(driver, "init_ray", no_ray)
    (tmp_path / "in").mkdir()
    args = ["score", "--model", str(artifact), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, [*args, "--backend", "onnx", "--gpus-per-actor", "1"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"Error: {ONNX_ON_GPU}"]
    assert "Traceback" not in result.output
