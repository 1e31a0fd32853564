"""Scoring throughput: `vehicle-ray score` (TTA n=4) vs plain fastai `learn.tta`, same model and files.

Whole-process wall time of each (median of --repeats), plus two model-only bounds (forward_bound.py):
the eager fp32 forward passes alone (5 per image) on pre-decoded batches, and the "int8 bound": the
artifact's int8 ONNX model alone, TTA's n+1 passes on pre-decoded, pre-augmented batches with the
actors' thread count (read from the run's summary.json), i.e. what the scorer's CPU default could do
if decode, augmentation and hand-offs cost nothing. vehicle-ray's run is split with its summary.json
`timings`: start-up (process start to the first predictions reaching the driver: imports, Ray,
listing, actor start, model load, the first batch) and the steady state (first to last predictions),
whose images/s is reported as a fraction of the int8 bound. Ratios > 1 mean vehicle-ray is faster.
vehicle-ray runs with its defaults (on this CPU: ONNX Runtime, int8 passes, the fused augmentation;
dumps of at most 1000 files in-process, larger ones on an embedded Ray; --ray: always Ray). The
default dump is 1000 images; --images 600, --images 100 --size 64 and --dump DIR are the other
cases issue #17 sets targets for. --dump DIR scores
the files of DIR instead of generated ones (e.g. bench/camera_jpegs.py's 1920x1080 JPEGs), and
--exact-decode passes that flag to `vehicle-ray score`.
Optionally (--commits K) the cost of chunk commits: the same scoring with --commit-every K (--commits 0:
the default commit flags, --commit-every 10000 --commit-interval 15) against one commit at the end,
interleaved, medians, with the seconds the commits took (summary.json's commit_s); K far below the
default bounds the default's cost from above.
Optionally (--adaptive) full against adaptive TTA (`--tta-mode full|adaptive`) with a model that is
actually trained (the tiny_cpu recipe at --size through `vehicle-ray train`, so model.json carries the
adaptive threshold), interleaved, medians: whole-process wall time and images/s, the passes per image,
the share of labels adaptive gives as full TTA did, and, where the dump has labels (the generated
ones do), each mode's accuracy. Two full-TTA runs disagree on some labels by themselves (random
augmentations): that share is printed beside the agreement.
Optionally (--memory) the peak summed RSS of the Ray processes at 1x and 10x the dump (with
--no-tta, to keep the 10x run short).

    .venv/bin/python bench/bench_score.py [--images 1000] [--size 224] [--repeats 3] [--commits K] [--memory]
        [--dump DIR] [--exact-decode] [--ray] [--adaptive] [--model DIR]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The first predictions reach the driver together with whatever finished meanwhile: the steady state
# (first to last predictions) needs enough batches of 64 after them to mean anything.
MIN_STEADY_IMAGES = 512


def make_model(out: Path, size: int) -> None:
    """A resnet18 artifact at `size` px (weights trained for one short epoch: timing does not care)."""
    import fastai.callback.progress  # noqa: F401  (Learner.no_bar)
    import fastai.callback.schedule  # noqa: F401  (Learner.fit_one_cycle)

    from vehicle_ray.data import read_labeled_csv, split_indices
    from vehicle_ray.recipe import load_recipe
    from vehicle_ray.sample_data import write_sample_data
    from vehicle_ray.train.artifact_writer import ArtifactContent, write_artifact
    from vehicle_ray.train.learner import build_dataloaders, build_learner

    write_sample_data(out / "train", train=64, test=0, size=size, seed=1)
    recipe = load_recipe("tiny_cpu").with_overrides(size=size)
    data = read_labeled_csv(out / "train" / "train.csv", out / "train" / "images")
    _, valid_idx = split_indices(len(data.items), recipe.valid_pct, recipe.seed)
    learn = build_learner(build_dataloaders(data, recipe, valid_idx), recipe)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    (out / "model").mkdir()
    write_artifact(out / "model", learn, ArtifactContent(recipe, data.classes, []))


def make_trained_model(out: Path, size: int) -> None:
    """A tiny_cpu model trained as a user trains it (`vehicle-ray train`, 2 workers, 8 epochs on 400
    sample images at `size` px): confident on most images, as adaptive TTA needs, with model.json's
    adaptive_tta fitted on its validation set."""
    from vehicle_ray.sample_data import write_sample_data

    write_sample_data(out / "train", train=400, test=0, size=size, seed=1)
    cmd = [sys.executable, "-m", "vehicle_ray.cli", "train", "--csv", str(out / "train" / "train.csv")]
    cmd += ["--images", str(out / "train" / "images"), "--out", str(out / "model"), "--config", "tiny_cpu"]
    cmd += ["--size", str(size), "--workers", "2", "--storage-path", str(out / "ray_runs")]
    timed(cmd)


def rss_sampler(stop: threading.Event, peak: list[int]) -> None:
    """Peak of the summed RSS of every process whose command line mentions ray (or the scorer)."""
    while not stop.is_set():
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"ray" in cmd or b"vehicle_ray" in cmd:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                continue
        peak[0] = max(peak[0], total)
        time.sleep(0.5)


def score_cmd(model: Path, images: Path, out: Path, *flags: str) -> list[str]:
    """The `vehicle-ray score` command line every measurement here runs."""
    return [
        sys.executable,
        "-m",
        "vehicle_ray.cli",
        "score",
        "--model",
        str(model),
        "--input",
        str(images),
        "--output",
        str(out),
        *flags,
    ]


def timed(cmd: list[str], measure_memory: bool = False) -> tuple[float, int]:
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=rss_sampler, args=(stop, peak), daemon=True)
    if measure_memory:
        sampler.start()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    stop.set()
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{(r.stdout + r.stderr)[-3000:]}")
    return wall, peak[0]


def bound_seconds(model: Path, images: Path, threads: int, *flags: str) -> float:
    """forward_bound.py's seconds (a fresh process: the bound pays no start-up, none is timed)."""
    r = subprocess.run(
        [sys.executable, str(HERE / "forward_bound.py"), str(model), str(images), str(threads), *flags],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def split_run(wall: float, summary: dict) -> dict:
    """A whole-process vehicle-ray run split by its summary.json timings: start-up from process start
    to the first predictions at the driver, the steady state, and what followed the last predictions
    (the last commit); seconds, plus the steady state's images/s."""
    t = summary["timings"]
    in_process_start = wall - summary["wall_seconds"]  # interpreter, imports, CLI: before score() starts
    return {
        "in_process": summary["resources"].get("in_process", False),
        "startup_s": round(in_process_start + t["first_rows_s"], 2),
        "steady_s": t["steady_s"],
        "tail_s": round(summary["wall_seconds"] - t["last_rows_s"], 2),
        "steady_images_per_s": t["steady_images_per_second"],
        "phases_s": {k: v for k, v in t.items() if k.endswith("_s")} | {"before_score": round(in_process_start, 2)},
    }


def timings(args, work: Path, images: Path, model: Path, flags: list[str]) -> dict:
    """Medians of --repeats whole-process runs of each side, the bounds, and the ratios."""
    py, n = sys.executable, count_files(images)
    walls: dict[str, list[float]] = {"vehicle_ray": [], "fastai_tta": []}
    bounds: dict[str, list[float]] = {"forward_bound": [], "int8_bound": []}
    runs: list[dict] = []
    for i in range(args.repeats):
        out = work / f"out{i}"
        walls["vehicle_ray"].append(timed(score_cmd(model, images, out, *flags))[0])
        summary = json.loads((out / "summary.json").read_text())
        runs.append(split_run(walls["vehicle_ray"][-1], summary))
        walls["fastai_tta"].append(
            timed([py, str(HERE / "plain_fastai_tta.py"), str(model), str(images), str(args.threads)])[0]
        )
        bounds["forward_bound"].append(bound_seconds(model, images, args.threads))
        threads, tta_n = summary["resources"]["threads"], summary["tta"]["n"]  # what the actors ran
        bounds["int8_bound"].append(bound_seconds(model, images, threads, "--int8", "--n", str(tta_n)))
        print(
            f"repeat {i + 1}: vehicle-ray {walls['vehicle_ray'][-1]:.1f}s (start-up {runs[-1]['startup_s']:.1f}s, "
            f"steady {runs[-1]['steady_images_per_s']} images/s), fastai tta {walls['fastai_tta'][-1]:.1f}s, "
            f"forward bound {bounds['forward_bound'][-1]:.1f}s, int8 bound {bounds['int8_bound'][-1]:.1f}s "
            f"({threads} threads, {tta_n + 1} passes)",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in {**walls, **bounds}.items()}
    steady = statistics.median(r["steady_images_per_s"] or 0.0 for r in runs)
    int8_rate = n / med["int8_bound"]
    if n < MIN_STEADY_IMAGES:
        print(f"note: with fewer than {MIN_STEADY_IMAGES} images the steady state is a few batches: not a measurement")
    return {
        "median_wall_s": med,
        "images_per_s": {k: round(n / v, 2) for k, v in med.items()},
        "speedup_vs_fastai_tta": round(med["fastai_tta"] / med["vehicle_ray"], 3),
        "speedup_vs_forward_bound": round(med["forward_bound"] / med["vehicle_ray"], 3),
        "vehicle_ray_startup_s": statistics.median(r["startup_s"] for r in runs),
        "vehicle_ray_steady_images_per_s": steady,
        "steady_fraction_of_int8_bound": round(steady / int8_rate, 3),
        "runs": runs,
    }


def adaptive_vs_full(args, work: Path, images: Path, model: Path, flags: list[str]) -> dict:
    """Full and adaptive TTA, interleaved, --repeats times each (plus one more full run for TTA's own
    label noise): medians of whole-process wall time, and from the predictions the passes per image,
    label agreement and accuracy where `images`' parent holds the dump's train.csv."""
    import pandas as pd

    n = count_files(images)
    walls: dict[str, list[float]] = {"full": [], "adaptive": []}
    labels: dict[str, pd.Series] = {}
    passes = []
    for i in range(max(1, args.repeats)):
        for mode in ("full", "adaptive"):
            out = work / f"{mode}{i}"
            walls[mode].append(timed(score_cmd(model, images, out, *flags, "--tta-mode", mode))[0])
            rows = pd.read_parquet(out / "predictions", columns=["path", "label", "tta_passes"]).set_index("path")
            labels[f"{mode}{i}"] = rows["label"]
            if mode == "adaptive":
                passes.append(float(rows["tta_passes"].mean()))
        print(f"repeat {i + 1}: full {walls['full'][-1]:.1f}s, adaptive {walls['adaptive'][-1]:.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    result = {
        "median_wall_s": med,
        "images_per_s": {k: round(n / v, 2) for k, v in med.items()},
        "adaptive_speedup": round(med["full"] / med["adaptive"], 3),
        "passes_per_image": {"full": None, "adaptive": round(statistics.median(passes), 4)},
        "label_agreement_adaptive_vs_full": round(float((labels["adaptive0"] == labels["full0"]).mean()), 5),
        "label_agreement_full_vs_full": round(float((labels["full0"] == labels[f"full{len(passes) - 1}"]).mean()), 5)
        if len(passes) > 1
        else None,
    }
    truth_csv = images.parent / "train.csv"
    if truth_csv.is_file():
        truth = pd.read_csv(truth_csv, dtype=str)
        truth.index = [str(images / f) for f in truth.iloc[:, 0]]
        result["accuracy"] = {
            mode: round(float((labels[f"{mode}0"] == truth.iloc[:, 1].reindex(labels[f"{mode}0"].index)).mean()), 5)
            for mode in walls
        }
    return result


def count_files(images: Path) -> int:
    return sum(1 for f in images.iterdir() if f.is_file())


SINGLE_COMMIT = ["--commit-every", str(10**9), "--commit-interval", str(10**9)]


def commit_cost(args, work: Path, images: Path, model: Path, flags: list[str]) -> dict:
    """Whole-process wall time with chunk commits (--commit-every K, or the default flags with K = 0)
    against a single commit at the end, interleaved; medians, the commits made and the seconds they
    took (summary.json's commit_s) as a share of the chunked run's wall time."""
    chunked = ["--commit-every", str(args.commits)] if args.commits else []
    walls: dict[str, list[float]] = {"chunked": [], "single": []}
    commits, commit_s = [], []
    for i in range(max(1, args.repeats)):
        for label, extra in (("chunked", chunked), ("single", SINGLE_COMMIT)):
            out = work / f"c{label}{i}"
            walls[label].append(timed(score_cmd(model, images, out, *flags, *extra))[0])
            if label == "chunked":
                summary = json.loads((out / "summary.json").read_text())
                commits.append(summary["chunks"])
                commit_s.append(summary["timings"]["commit_s"])
        print(
            f"repeat {i + 1}: {' '.join(chunked) or 'default commit flags'}: {walls['chunked'][-1]:.1f}s "
            f"({commits[-1]} commits, {commit_s[-1]:.3f}s committing), one commit: {walls['single'][-1]:.1f}s",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in walls.items()}
    return {
        "chunked_flags": chunked or "defaults",
        "commits": statistics.median(commits),
        "commit_s": statistics.median(commit_s),
        "commit_share_of_wall": round(statistics.median(commit_s) / med["chunked"], 5),
        "median_wall_s": med,
        "chunked_over_single": round(med["chunked"] / med["single"], 4),
    }


def main() -> None:
    from vehicle_ray.sample_data import write_sample_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="0: skip the timings (e.g. with --memory)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS at 1x and 10x the dump")
    ap.add_argument("--commits", type=int, help="K: time --commit-every K (0: the default flags) against one commit")
    ap.add_argument("--dump", type=Path, help="score the files of this directory instead of generated ones")
    ap.add_argument("--exact-decode", action="store_true", help="pass --exact-decode to vehicle-ray score")
    ap.add_argument("--ray", action="store_true", help="always the Ray pipeline (--in-process-up-to 0)")
    ap.add_argument("--adaptive", action="store_true", help="full vs adaptive TTA with a trained model")
    ap.add_argument("--model", type=Path, help="score with this artifact instead of making one (e.g. a kept one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    if args.model is None:
        (make_trained_model if args.adaptive else make_model)(work, args.size)
    if args.dump is None:
        write_sample_data(work / "dump", train=args.images, test=0, size=args.size, seed=2)
    images, model = args.dump or work / "dump" / "images", args.model or work / "model"
    flags = (["--exact-decode"] if args.exact_decode else []) + (["--in-process-up-to", "0"] if args.ray else [])
    result: dict = {"images": count_files(images), "size": args.size, "repeats": args.repeats, "threads": args.threads}
    result["score_flags"] = flags
    if args.adaptive:
        result["adaptive_vs_full"] = adaptive_vs_full(args, work, images, model, flags)
    elif args.commits is not None:
        result["commit_cost"] = commit_cost(args, work, images, model, flags)
    elif args.repeats:
        result.update(timings(args, work, images, model, flags))
    if args.memory:
        big = work / "dump10x" / "images"
        big.mkdir(parents=True)
        for k in range(10):
            for f in images.iterdir():
                os.link(f, big / f"{k}_{f.name}")
        # --no-tta: memory is about streaming, not passes, and it keeps the 10x run to minutes; both on
        # Ray, whose read-ahead is what could grow with the dump
        small_peak = timed(
            score_cmd(model, images, work / "mem1", "--no-tta", "--in-process-up-to", "0"),
            measure_memory=True,
        )[1]
        big_peak = timed(
            score_cmd(model, big, work / "mem10", "--no-tta", "--in-process-up-to", "0"),
            measure_memory=True,
        )[1]
        result["peak_rss_mb"] = {
            "1x": round(small_peak / 2**20),
            "10x": round(big_peak / 2**20),
            "ratio": round(big_peak / small_peak, 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
