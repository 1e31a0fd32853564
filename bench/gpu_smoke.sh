#!/usr/bin/env bash
# GPU smoke test for vehicle_ray (issue #18), for a machine with one or more NVIDIA GPUs; about 5-10
# minutes. Offline: the "pretrained" weights are a random torchvision state_dict written here.
#
#   bash bench/gpu_smoke.sh [--dry-run] [--work DIR] [--arch resnet50] [--size 128] [--test-images 1000]
#
# Steps (each logged to WORK/logs/STEP.log, timed, PASS/FAIL/SKIP in the summary at the end):
#   gpu        nvidia-smi, torch.cuda.get_device_capability, the autocast precision scoring will choose
#   data       vehicle-ray sample-data
#   weights    a random torchvision ARCH state_dict file (stands in for ImageNet weights)
#   onnx_gpu   --backend onnx --gpus-per-actor 1 is refused: exit 2, one line, before Ray starts
#   train      1 frozen + 1 unfrozen epoch from --weights with --gpu (model.json "training" shows the
#              precision, loader workers, channels_last that ran)
#   forward    the trained model's pure forward at the scoring precision (bf16/fp16 autocast,
#              channels_last, batch 128): the img/s bound the score_* steps are compared with
#   train_cpu  --cpu training on this GPU node: no process of it may appear in nvidia-smi
#   train_util one unfrozen epoch at 299 px with --gpu: the GPU's utilisation (nvidia-smi, every 0.5 s)
#   probe      Ray actors: num_gpus=0 builds the Predictor on CPU and never initialises CUDA;
#              num_gpus=1 runs on cuda (transform tensors too) and records bf16/fp16 by capability;
#              the same with --allow-pickle's export.pkl
#   score_g1, score_g0.5, score_g0, score_pickle   vehicle-ray score, images/s from the summary line
#   train_nccl with >= 2 GPUs: --workers 2 --gpu (NCCL)
# --dry-run (or CPU_ONLY=1) runs what needs no GPU (arguments, environment, sample data, weights file,
# the onnx refusal) at a small size, prints the GPU commands it would run, and exits 0 on a CPU box.
# Exit status: 0 when no step failed, 1 otherwise.

set -uo pipefail

DRY_RUN=${CPU_ONLY:-0}
WORK=""
ARCH=${ARCH:-resnet50}
SIZE=${SIZE:-128}
N_TRAIN=${N_TRAIN:-400}
N_TEST=${N_TEST:-1000}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}

usage() { sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run | --cpu-only) DRY_RUN=1 ;;
        --work) WORK=${2:?--work needs a directory}; shift ;;
        --arch) ARCH=${2:?--arch needs a name}; shift ;;
        --size) SIZE=${2:?--size needs pixels}; shift ;;
        --test-images) N_TEST=${2:?--test-images needs a count}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$DRY_RUN" = 1 ] || [ "$DRY_RUN" = 0 ] || { echo "CPU_ONLY must be 0 or 1" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
WORK=${WORK:-$(mktemp -d /tmp/vehicle_ray_gpu_smoke.XXXXXX)}
mkdir -p "$WORK/logs"
if [ "$DRY_RUN" = 1 ]; then  # small enough for a CPU box in well under a minute
    ARCH=resnet18 SIZE=32 N_TRAIN=32 N_TEST=16
fi
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1 PY WORK ARCH SIZE
vr() { "$PY" -m vehicle_ray.cli "$@"; }

declare -a RESULTS=()
record() { RESULTS+=("$(printf '%-13s %-5s %7s  %s' "$1" "$2" "$3" "$4")"); }

# step NAME CMD...: run CMD with a timeout, log to WORK/logs/NAME.log, record PASS/FAIL and its time.
step() {
    local name=$1; shift
    local log="$WORK/logs/$name.log" t0 rc wall
    echo "== $name: $*"
    t0=$(date +%s%N)
    # bash -c: the commands may be this script's (exported) functions
    timeout -k 15 "$STEP_TIMEOUT" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
    rc=$?
    wall=$((($(date +%s%N) - t0) / 100000000))
    wall=$((wall / 10)).$((wall % 10))s
    tail -n 3 "$log" | sed 's/^/   | /'
    if [ $rc -eq 0 ]; then record "$name" PASS "$wall" "$(note_for "$name" "$log")"
    else record "$name" FAIL "$wall" "exit $rc, see $log"; fi
    return $rc
}

skip() { echo "== $1: skipped ($2)"; record "$1" SKIP - "$2"; }
gpu_step() {  # a step that needs a GPU: printed, not run, in a dry run
    if [ "$DRY_RUN" = 1 ]; then
        echo "== $1: DRY RUN, would run: ${*:2}"
        record "$1" DRY - "needs a GPU"
        return 0
    fi
    step "$@"
}

note_for() {  # what the summary shows for a passed step
    case "$1" in
        score_*) grep -o '[0-9.]* images/s' "$2" | tail -n 1 ;;
        gpu) grep -m1 -o 'capability.*' "$2" ;;
        probe) grep -c '^ok ' "$2" | sed 's/$/ checks ok/' ;;
        train) grep -o '"precision": "[a-z0-9]*"' "$WORK/model/model.json" 2>/dev/null | head -n 1 ;;
        train_util | forward | train_cpu) tail -n 1 "$2" ;;
        *) echo "" ;;
    esac
}

gpu_info() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv
    else
        echo "no nvidia-smi on this machine"
    fi
    "$PY" - <<'EOF'
import torch
from vehicle_ray.device import gpu_precision
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible GPU(s)")
for i in range(torch.cuda.device_count()):
    cap = torch.cuda.get_device_capability(i)
    print(f"cuda:{i} {torch.cuda.get_device_name(i)} capability {cap[0]}.{cap[1]}: "
          f"scoring autocasts to {gpu_precision(cap)}")
EOF
}

make_weights() {
    "$PY" - "$ARCH" "$WORK/weights.pth" <<'EOF'
import sys, torch, torchvision
arch, path = sys.argv[1], sys.argv[2]
torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
print(f"random {arch} state_dict -> {path}")
EOF
}

# gpu_sampler OUT CMD...: run CMD while nvidia-smi writes "utilisation% compute-processes" lines to OUT
# twice a second; returns CMD's status.
gpu_sampler() {
    local out=$1; shift
    (while true; do
        echo "$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits | head -n 1)" \
            "$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -c .)"
        sleep 0.5
    done) >"$out" &
    local sampler=$! rc
    "$@"
    rc=$?
    kill "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    return $rc
}

train_util() {  # one unfrozen epoch at 299 px on one GPU: median and p90 utilisation while it ran
    vr sample-data "$WORK/data299" --train 1024 --test 0 --size 320 >/dev/null &&
        gpu_sampler "$WORK/util.txt" vr train --csv "$WORK/data299/train.csv" --images "$WORK/data299/images" \
            --arch "$ARCH" --size 299 --bs 64 --pretrained --weights "$WORK/weights.pth" --freeze-epochs 0 \
            --epochs 1 --gpu --storage-path "$WORK/ray_results" --out "$WORK/model299" --overwrite || return 1
    "$PY" - "$WORK/util.txt" <<'EOF'
import statistics, sys
busy = sorted(int(line.split()[0]) for line in open(sys.argv[1]) if len(line.split()) == 2 and int(line.split()[1]) > 0)
if not busy:
    raise SystemExit("no sample while the training process was on the GPU")
print(f"GPU utilisation while training at 299px: median {statistics.median(busy):.0f}%, "
      f"p90 {busy[int(0.9 * (len(busy) - 1))]}% ({len(busy)} samples)")
EOF
}

train_cpu_stays_off_gpu() {  # a --cpu worker on this GPU node: never a process on the GPU
    gpu_sampler "$WORK/cpu_train.txt" vr train --csv "$WORK/data/train.csv" --images "$WORK/data/images" \
        --config tiny_cpu --size 32 --epochs 1 --cpu --storage-path "$WORK/ray_results" \
        --out "$WORK/model_cpu" --overwrite || return 1
    local max_procs
    max_procs=$(awk 'NF == 2 {print $2}' "$WORK/cpu_train.txt" | sort -n | tail -n 1)
    echo "compute processes on the GPU during --cpu training: at most ${max_procs:-0}"
    [ "${max_procs:-0}" -eq 0 ]
}

forward_bound() {  # img/s of the trained model's forward alone, at the precision scoring uses
    "$PY" - "$WORK/model" <<'EOF'
import sys, time
import torch
from vehicle_ray.artifact import load_torch_model, open_artifact
from vehicle_ray.device import gpu_precision

art = open_artifact(sys.argv[1])
model = load_torch_model(art).cuda().eval().to(memory_format=torch.channels_last)
precision = gpu_precision(torch.cuda.get_device_capability())
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
x = torch.randn(128, 3, art.size, art.size, device="cuda").to(memory_format=torch.channels_last)
with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
    for _ in range(5):
        model(x)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 5:
        model(x)
        n += len(x)
    torch.cuda.synchronize()
print(f"{n / (time.perf_counter() - t0):.0f} images/s pure {precision} forward at {art.size}px, batch 128")
EOF
}

# --backend onnx on GPU actors: exit 2 with one line, and no Ray (RAY_ADDRESS points nowhere)
onnx_refused() {
    local err rc
    err=$(RAY_ADDRESS=127.0.0.1:1 vr score --model "$1" --input "$WORK/data/test.csv" \
        --images "$WORK/data/images" --output "$WORK/onnx_gpu" --backend onnx --gpus-per-actor 1 2>&1 >/dev/null)
    rc=$?
    echo "exit $rc: $err"
    [ $rc -eq 2 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && [[ $err == *"--backend onnx runs on CPU actors"* ]]
}

onnx_refused_by_planning() {  # the same refusal, on the driver's planning function (no model needed)
    "$PY" - <<'EOF'
from pathlib import Path
from vehicle_ray.errors import InputError
from vehicle_ray.score.model import ModelSpec
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import tta_settings
from vehicle_ray.score.tta import TTASettings
spec = ModelSpec("m", Path("m"), False, ["a", "b"], 32, "squish", "m", "0", TTASettings(), True, True)
try:
    tta_settings(spec, ScoreOptions(backend="onnx", gpus_per_actor=1))
except InputError as e:
    print("refused:", e)
else:
    raise SystemExit("--backend onnx with --gpus-per-actor 1 was not refused")
EOF
}

# Ray actors with num_gpus 0 and 1 build the real Predictor from the plan and report what they touched.
probe() {
    "$PY" - "$WORK/model" <<'EOF'
import itertools, os, shutil, sys, tempfile
from pathlib import Path

import numpy as np
import ray

model = Path(sys.argv[1])
pickle_dir = Path(tempfile.mkdtemp())
shutil.copy(model / "export.pkl", pickle_dir / "export.pkl")


@ray.remote
class Probe:
    def run(self, model: str, allow_pickle: bool, gpus: float) -> dict:
        import os
        import torch
        from vehicle_ray.score.model import resolve_model
        from vehicle_ray.score.options import ScoreOptions
        from vehicle_ray.score.planning import actor_device, tta_settings
        from vehicle_ray.score.predictor import Predictor

        spec = resolve_model(model, allow_pickle)
        opts = ScoreOptions(gpus_per_actor=gpus, backend="torch", tta_n=2)
        p = Predictor(spec, tta_settings(spec, opts), backend="torch", device=actor_device(gpus))
        n, s = 4, spec.size
        batch = {"path": np.array([f"/x/{i}" for i in range(n)], dtype=object),
                 "image": np.random.default_rng(0).integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                 "error": np.array([""] * n, dtype=object)}
        rows = p(batch).to_pydict()
        devices = sorted({str(v.device) for t in p.plain.fs for v in vars(t).values() if isinstance(v, torch.Tensor)})
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "cuda_available": torch.cuda.is_available(), "device": str(p.device),
                "cuda_initialized": torch.cuda.is_initialized(), "transform_devices": devices,
                "precision": (rows["tta_plain_precision"][0], rows["tta_aug_precision"][0]),
                "capability": torch.cuda.get_device_capability() if p.device.type == "cuda" else None}


ray.init(num_cpus=4)
failed = 0
gpu_counts = [float(g) for g in os.environ.get("PROBE_GPUS", "0 1").split()]  # PROBE_GPUS=0 runs on a CPU box
for (name, path, pickle), gpus in itertools.product([("artifact", model, False), ("pickle", pickle_dir, True)], gpu_counts):
    r = ray.get(Probe.options(num_cpus=1, num_gpus=gpus).remote().run.remote(str(path), pickle, gpus))
    if gpus == 0:
        ok = r["device"] == "cpu" and not r["cuda_initialized"] and r["transform_devices"] == ["cpu"]
    else:
        want = "bf16" if tuple(r["capability"]) >= (8, 0) else "fp16"
        ok = r["device"].startswith("cuda") and all(d.startswith("cuda") for d in r["transform_devices"]) \
            and r["precision"] == (want, want)
    failed += not ok
    print(f"{'ok' if ok else 'FAILED'} {name} num_gpus={gpus}: {r}")
ray.shutdown()
sys.exit(1 if failed else 0)
EOF
}

summary_json_precision() {  # the precision summary.json recorded for an output
    "$PY" -c 'import json,sys; t=json.load(open(sys.argv[1]))["tta"]; print(t["plain_precision"], t["aug_precision"])' \
        "$1/summary.json" 2>/dev/null
}

score() {  # score OUT_NAME MODEL [extra options]: scores data/test.csv
    local out=$WORK/$1 model=$2; shift 2
    vr score --model "$model" --input "$WORK/data/test.csv" --images "$WORK/data/images" \
        --output "$out" --overwrite --progress-interval 10 "$@" &&
        echo "summary.json precision: $(summary_json_precision "$out")"
}

export -f vr gpu_info make_weights onnx_refused onnx_refused_by_planning probe summary_json_precision score \
    gpu_sampler train_util train_cpu_stays_off_gpu forward_bound
echo "vehicle_ray GPU smoke: work dir $WORK, $ARCH at ${SIZE}px, $N_TRAIN train / $N_TEST test images$(
    [ "$DRY_RUN" = 1 ] && echo ', DRY RUN (no GPU steps)')"
T0=$(date +%s)

step gpu gpu_info
step data vr sample-data "$WORK/data" --train "$N_TRAIN" --test "$N_TEST" --size "$SIZE"
step weights make_weights

TRAIN=(vr train --csv "$WORK/data/train.csv" --images "$WORK/data/images" --arch "$ARCH" --size "$SIZE"
    --bs 32 --pretrained --weights "$WORK/weights.pth" --freeze-epochs 1 --epochs 1 --gpu
    --storage-path "$WORK/ray_results" --overwrite)

if [ "$DRY_RUN" = 1 ]; then
    # without a trained model the CLI cannot get that far: the dry run checks the driver-side refusal
    step onnx_gpu onnx_refused_by_planning
fi

gpu_step train "${TRAIN[@]}" --workers 1 --out "$WORK/model"
if [ "$DRY_RUN" = 0 ]; then
    if [ -f "$WORK/model/model.json" ]; then
        step onnx_gpu onnx_refused "$WORK/model"
        step probe probe
        mkdir -p "$WORK/pickle" && cp "$WORK/model/export.pkl" "$WORK/pickle/"
    else
        for s in onnx_gpu forward probe score_g1 score_g0.5 score_g0 score_pickle; do skip "$s" "no trained model"; done
    fi
fi
if [ "$DRY_RUN" = 1 ] || [ -f "$WORK/model/model.json" ]; then
    gpu_step forward forward_bound
    gpu_step score_g1 score score_g1 "$WORK/model" --gpus-per-actor 1
    gpu_step score_g0.5 score score_g05 "$WORK/model" --gpus-per-actor 0.5
    gpu_step score_g0 score score_g0 "$WORK/model" --gpus-per-actor 0
    gpu_step score_pickle score score_pickle "$WORK/pickle/export.pkl" --allow-pickle --gpus-per-actor 1
fi

gpu_step train_cpu train_cpu_stays_off_gpu
gpu_step train_util train_util

N_GPUS=0
command -v nvidia-smi >/dev/null && N_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$DRY_RUN" = 1 ]; then
    gpu_step train_nccl "${TRAIN[@]}" --workers 2 --out "$WORK/model_nccl"
elif [ "$N_GPUS" -ge 2 ]; then
    step train_nccl "${TRAIN[@]}" --workers 2 --out "$WORK/model_nccl"
else
    skip train_nccl "$N_GPUS GPU(s): 2-rank NCCL needs 2"
fi

echo
echo "== summary ($(($(date +%s) - T0))s, logs in $WORK/logs)$([ "$DRY_RUN" = 1 ] && echo ' DRY RUN')"
printf '%s\n' "${RESULTS[@]}"
if printf '%s\n' "${RESULTS[@]}" | grep -q ' FAIL '; then exit 1; fi
exit 0
