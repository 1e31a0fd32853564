#!/usr/bin/env bash
# GPU smoke test for vehicle_ray (issue #18), for a machine with one or more NVIDIA GPUs; about 5-10
# minutes. Offline: the "pretrained" weights are a random torchvision state_dict written here.
#
#   bash bench/gpu_smoke.sh [--rehearse] [--work DIR] [--arch resnet50] [--size 128] [--test-images 1000]
#
# Steps (each logged to WORK/logs/STEP.log, timed, PASS/FAIL/SKIP in the summary at the end):
#   gpu        nvidia-smi, torch.cuda.get_device_capability, the autocast precision scoring will choose
#   data       vehicle-ray sample-data
#   weights    a random torchvision ARCH state_dict file (stands in for ImageNet weights)
#   train      1 frozen + 1 unfrozen epoch from --weights with --gpu (model.json "training" shows the
#              precision, loader workers, channels_last that ran)
#   onnx_gpu   --backend onnx --gpus-per-actor 1 is refused: exit 2, one line, before Ray starts
#   forward    the trained model's pure forward at the scoring precision (bf16/fp16 autocast,
#              channels_last, batch 128): the img/s bound the score_* steps are compared with
#   probe      Ray actors: num_gpus=0 builds the Predictor on CPU and never initialises CUDA;
#              num_gpus=1 runs on cuda (its batch transforms too: a pass with them left on the CPU
#              fails) and records bf16/fp16 by capability; the same with --allow-pickle's export.pkl
#   score_g1, score_g0.5, score_g0, score_pickle   vehicle-ray score through Ray (--in-process-up-to 0;
#              g0: CPU actors on this GPU node), images/s from the summary line
#   train_cpu  --cpu training on this GPU node: it never holds the GPU (nvidia-smi: no compute process,
#              and no CUDA context's worth of GPU memory, which is what containers still show)
#   train_util one unfrozen epoch at 299 px with --gpu: the GPU's utilisation (nvidia-smi, every 0.5 s)
#   train_nccl with >= 2 GPUs: --workers 2 --gpu (NCCL)
# --rehearse runs every step on this machine's CPU at tiny sizes: the same commands and Python code with
# --cpu for --gpu, --gpus-per-actor 0 for any GPU share, device "cpu" in the forward and the probe, and
# train_nccl as 2 gloo ranks (tests/test_gpu_smoke.py runs it in CI, so a renamed flag or attribute
# fails there, not on the first GPU day). Only GPU-only facts (capability, utilisation, nvidia-smi's
# view) are not rehearsed: a step that cannot observe them says SKIP with the reason, here and on a GPU
# machine alike (e.g. nvidia-smi in a container that lists no processes and no memory); train_cpu and
# train_util, whose verdicts are such facts, rehearse their training commands with --dry-run.
# Exit status: 0 when no step failed, 1 otherwise.

set -uo pipefail

REHEARSE=${REHEARSE:-0}
WORK=""
ARCH=${ARCH:-resnet50}
SIZE=${SIZE:-128}
N_TRAIN=${N_TRAIN:-400}
N_TEST=${N_TEST:-1000}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
SKIPPED=77  # a step's exit status for "what it checks cannot be observed here" (the last log line says why)

usage() { sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) REHEARSE=1 ;;
        --work) WORK=${2:?--work needs a directory}; shift ;;
        --arch) ARCH=${2:?--arch needs a name}; shift ;;
        --size) SIZE=${2:?--size needs pixels}; shift ;;
        --test-images) N_TEST=${2:?--test-images needs a count}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$REHEARSE" = 1 ] || [ "$REHEARSE" = 0 ] || { echo "REHEARSE must be 0 or 1" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
WORK=${WORK:-$(mktemp -d /tmp/vehicle_ray_gpu_smoke.XXXXXX)}
mkdir -p "$WORK/logs"
if [ "$REHEARSE" = 1 ]; then  # tiny sizes: the whole rehearsal takes about 3 minutes on 2 CPUs
    ARCH=resnet18 SIZE=32 N_TRAIN=32 N_TEST=16 BS=8 UTIL_SIZE=32 UTIL_DATA_SIZE=40 UTIL_TRAIN=16 UTIL_BS=8
    DEVICE=cpu ON_DEVICE=--cpu PROBE_GPUS=0 FORWARD_BATCH=8 FORWARD_SECONDS=1
    # train_util and train_cpu observe the GPU, which a rehearsal cannot (their verdicts SKIP): their
    # commands are checked with --dry-run (every check the run makes, no Ray), which saves two trainings
    GPU_FACT_RUN=--dry-run
else
    BS=32 UTIL_SIZE=299 UTIL_DATA_SIZE=320 UTIL_TRAIN=1024 UTIL_BS=64
    DEVICE=cuda ON_DEVICE=--gpu PROBE_GPUS=${PROBE_GPUS:-0 1} FORWARD_BATCH=128 FORWARD_SECONDS=5
    GPU_FACT_RUN=
fi
export RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1 PY WORK ARCH SIZE REHEARSE SKIPPED ON_DEVICE DEVICE PROBE_GPUS \
    FORWARD_BATCH FORWARD_SECONDS GPU_FACT_RUN UTIL_SIZE UTIL_DATA_SIZE UTIL_TRAIN UTIL_BS BS
vr() { "$PY" -m vehicle_ray.cli "$@"; }
gpus() { if [ "$REHEARSE" = 1 ]; then echo 0; else echo "$1"; fi; }  # a GPU share, 0 in a rehearsal

declare -a RESULTS=()
record() { RESULTS+=("$(printf '%-13s %-5s %7s  %s' "$1" "$2" "$3" "$4")"); }

# step NAME CMD...: run CMD with a timeout, log to WORK/logs/NAME.log, record PASS/FAIL/SKIP and its time.
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
    elif [ $rc -eq "$SKIPPED" ]; then record "$name" SKIP "$wall" "$(tail -n 1 "$log")"
    else record "$name" FAIL "$wall" "exit $rc, see $log"; fi
    return $rc
}

skip() { echo "== $1: skipped ($2)"; record "$1" SKIP - "$2"; }

note_for() {  # what the summary shows for a passed step
    case "$1" in
        score_*) grep -o '[0-9.]* images/s' "$2" | tail -n 1 ;;
        gpu) grep -m1 -o 'capability.*' "$2" ;;
        probe) grep -c '^ok ' "$2" | sed 's/$/ checks ok/' ;;
        train) grep -o '"precision": "[a-z0-9]*"' "$WORK/model/model.json" 2>/dev/null | head -n 1 ;;
        train_util | forward | train_cpu | train_nccl) tail -n 1 "$2" ;;
        *) echo "" ;;
    esac
}

gpu_info() {  # GPU-only facts: exit SKIPPED where they cannot be observed (a rehearsal on a CPU box)
    "$PY" - <<'EOF'
import os, sys
import torch
from vehicle_ray.device import gpu_precision
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible GPU(s)")
for i in range(torch.cuda.device_count()):
    cap = torch.cuda.get_device_capability(i)
    print(f"cuda:{i} {torch.cuda.get_device_name(i)} capability {cap[0]}.{cap[1]}: "
          f"scoring autocasts to {gpu_precision(cap)}")
if not torch.cuda.device_count():
    print("no GPU visible to torch: compute capability and autocast precision cannot be observed")
    sys.exit(int(os.environ["SKIPPED"]) if os.environ["REHEARSE"] == "1" else 1)
EOF
    local rc=$?
    [ $rc -eq 0 ] || return $rc
    if ! command -v nvidia-smi >/dev/null; then
        echo "no nvidia-smi on this machine: the driver's view of the GPUs cannot be observed"
        return "$SKIPPED"
    fi
    nvidia-smi --query-gpu=index,name,compute_cap,memory.total,driver_version --format=csv
}

make_weights() {
    "$PY" - "$ARCH" "$WORK/weights.pth" <<'EOF'
import sys, torch, torchvision
arch, path = sys.argv[1], sys.argv[2]
torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
print(f"random {arch} state_dict -> {path}")
EOF
}

# gpu_sampler OUT CMD...: run CMD while nvidia-smi writes "utilisation% memory-MiB compute-processes" lines
# to OUT twice a second (bench/gpu_samples.py reads them); returns CMD's status. Without nvidia-smi OUT
# stays empty and the verdict is SKIP.
gpu_sampler() {
    local out=$1; shift
    : >"$out"
    if ! command -v nvidia-smi >/dev/null; then "$@"; return; fi
    (while true; do
        echo "$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits | head -n 1 | tr -d ,)" \
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

train_util() {  # one unfrozen epoch at 299 px on one GPU: median and p90 utilisation while it held the GPU
    vr sample-data "$WORK/data_util" --train "$UTIL_TRAIN" --test 0 --size "$UTIL_DATA_SIZE" >/dev/null &&
        gpu_sampler "$WORK/util.txt" vr train --csv "$WORK/data_util/train.csv" --images "$WORK/data_util/images" \
            --arch "$ARCH" --size "$UTIL_SIZE" --bs "$UTIL_BS" --pretrained --weights "$WORK/weights.pth" \
            --freeze-epochs 0 --epochs 1 "$ON_DEVICE" --storage-path "$WORK/ray_results" --out "$WORK/model_util" \
            --overwrite $GPU_FACT_RUN || return 1
    "$PY" bench/gpu_samples.py utilisation "$WORK/util.txt"
}

train_cpu_stays_off_gpu() {  # a --cpu worker on this GPU node never holds the GPU
    gpu_sampler "$WORK/cpu_train.txt" vr train --csv "$WORK/data/train.csv" --images "$WORK/data/images" \
        --config tiny_cpu --size 32 --bs "$BS" --epochs 1 --cpu --storage-path "$WORK/ray_results" \
        --out "$WORK/model_cpu" --overwrite $GPU_FACT_RUN || return 1
    "$PY" bench/gpu_samples.py stayed-off "$WORK/cpu_train.txt"
}

forward_bound() {  # img/s of the trained model's forward alone, at the precision scoring uses on DEVICE
    "$PY" - "$WORK/model" <<'EOF'
import contextlib, os, sys, time
import torch
from vehicle_ray.artifact import open_artifact
from vehicle_ray.network import load_torch_model
from vehicle_ray.device import gpu_precision

art = open_artifact(sys.argv[1])
device = torch.device(os.environ["DEVICE"])
batch, seconds = int(os.environ["FORWARD_BATCH"]), float(os.environ["FORWARD_SECONDS"])
on_gpu = device.type == "cuda"
precision = gpu_precision(torch.cuda.get_device_capability(device)) if on_gpu else "fp32"  # CPU scoring: fp32
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]
sync = torch.cuda.synchronize if on_gpu else (lambda: None)
model = load_torch_model(art).to(device).eval().to(memory_format=torch.channels_last)
x = torch.randn(batch, 3, art.size, art.size, device=device).to(memory_format=torch.channels_last)
autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
with torch.inference_mode(), autocast:
    for _ in range(5):
        model(x)
    sync()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model(x)
        n += len(x)
    sync()
print(f"{n / (time.perf_counter() - t0):.0f} images/s pure {precision} forward on {device.type} at {art.size}px, "
      f"batch {batch}")
EOF
}

# --backend onnx on GPU actors: exit 2 with one line, and no Ray (RAY_ADDRESS points nowhere). The refusal
# comes from the plan, so the rehearsal asks for a GPU share too.
onnx_refused() {
    local err rc
    err=$(RAY_ADDRESS=127.0.0.1:1 vr score --model "$1" --input "$WORK/data/test.csv" \
        --images "$WORK/data/images" --output "$WORK/onnx_gpu" --backend onnx --gpus-per-actor 1 2>&1 >/dev/null)
    rc=$?
    echo "exit $rc: $err"
    [ $rc -eq 2 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && [[ $err == *"--backend onnx runs on CPU actors"* ]]
}

# Ray actors with num_gpus 0 and 1 build the real Predictor from the plan and report what they touched.
probe() {
    "$PY" - "$WORK/model" <<'EOF'
import itertools, os, shutil, sys, tempfile
from pathlib import Path

import numpy as np
import ray

from vehicle_ray.cluster import init_ray

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
        device = actor_device(gpus)
        p = Predictor(spec, tta_settings(spec, opts), backend="torch", device=device)
        n, s = 4, spec.size
        batch = {"path": np.array([f"/x/{i}" for i in range(n)], dtype=object),
                 "image": np.random.default_rng(0).integers(0, 256, (n, s, s, 3), dtype=np.uint8),
                 "error": np.array([""] * n, dtype=object)}
        rows = p(batch).to_pydict()  # on cuda, a batch transform left on the CPU fails here
        on_gpu = device == "cuda"
        return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": device,
                "cuda_available": torch.cuda.is_available(), "cuda_initialized": torch.cuda.is_initialized(),
                "cuda_mib": torch.cuda.memory_allocated() >> 20 if torch.cuda.is_initialized() else 0,
                "rows": len(rows["label"]), "row_errors": [e for e in rows["error"] if e],
                "precision": (rows["tta_plain_precision"][0], rows["tta_aug_precision"][0]),
                "capability": torch.cuda.get_device_capability() if on_gpu else None}


init_ray(num_cpus=4)
failed = 0
gpu_counts = [float(g) for g in os.environ["PROBE_GPUS"].split()]  # 0 alone in a rehearsal
for (name, path, pickle), gpus in itertools.product([("artifact", model, False), ("pickle", pickle_dir, True)], gpu_counts):
    r = ray.get(Probe.options(num_cpus=1, num_gpus=gpus).remote().run.remote(str(path), pickle, gpus))
    ok = r["rows"] == 4 and not r["row_errors"]
    if gpus == 0:
        ok = ok and r["device"] == "cpu" and not r["cuda_initialized"] and r["precision"] == ("fp32", "fp32")
    else:
        want = "bf16" if tuple(r["capability"]) >= (8, 0) else "fp16"
        ok = ok and r["device"] == "cuda" and r["cuda_mib"] > 0 and r["precision"] == (want, want)
    failed += not ok
    print(f"{'ok' if ok else 'FAILED'} {name} num_gpus={gpus:g}: {r}")
ray.shutdown()
sys.exit(1 if failed else 0)
EOF
}

summary_json_precision() {  # the precision summary.json recorded for an output
    "$PY" -c 'import json,sys; t=json.load(open(sys.argv[1]))["tta"]; print(t["plain_precision"], t["aug_precision"])' \
        "$1/summary.json" 2>/dev/null
}

# score OUT_NAME MODEL [extra options]: scores data/test.csv through Ray (--in-process-up-to 0: a listing
# this small would otherwise run in this process, whatever the actors' plan)
score() {
    local out=$WORK/$1 model=$2; shift 2
    vr score --model "$model" --input "$WORK/data/test.csv" --images "$WORK/data/images" \
        --output "$out" --overwrite --progress-interval 10 --in-process-up-to 0 "$@" &&
        echo "summary.json precision: $(summary_json_precision "$out")"
}

export -f vr gpus gpu_info make_weights onnx_refused probe summary_json_precision score gpu_sampler train_util \
    train_cpu_stays_off_gpu forward_bound
echo "vehicle_ray GPU smoke: work dir $WORK, $ARCH at ${SIZE}px, $N_TRAIN train / $N_TEST test images$(
    [ "$REHEARSE" = 1 ] && echo ', REHEARSAL on the CPU')"
T0=$(date +%s)

step gpu gpu_info
step data vr sample-data "$WORK/data" --train "$N_TRAIN" --test "$N_TEST" --size "$SIZE"
step weights make_weights

# --bs-per-worker: BS on each GPU whatever --workers is (--bs is the global batch, split over the workers)
TRAIN=(vr train --csv "$WORK/data/train.csv" --images "$WORK/data/images" --arch "$ARCH" --size "$SIZE"
    --bs-per-worker "$BS" --pretrained --weights "$WORK/weights.pth" --freeze-epochs 1 --epochs 1 "$ON_DEVICE"
    --storage-path "$WORK/ray_results" --overwrite)

step train "${TRAIN[@]}" --workers 1 --out "$WORK/model"
if [ -f "$WORK/model/model.json" ]; then
    mkdir -p "$WORK/pickle" && cp "$WORK/model/export.pkl" "$WORK/pickle/"
    step onnx_gpu onnx_refused "$WORK/model"
    step forward forward_bound
    step probe probe
    # GPU actors (and --allow-pickle) run the torch backend: --backend torch makes the rehearsal's CPU
    # actors run that same path (on a GPU it is what auto chooses anyway)
    step score_g1 score score_g1 "$WORK/model" --gpus-per-actor "$(gpus 1)" --backend torch
    if [ "$REHEARSE" = 1 ]; then
        skip score_g0.5 "rehearsed by score_g1: on the CPU both run --gpus-per-actor 0"
    else
        step score_g0.5 score score_g05 "$WORK/model" --gpus-per-actor 0.5 --backend torch
    fi
    step score_g0 score score_g0 "$WORK/model" --gpus-per-actor 0
    step score_pickle score score_pickle "$WORK/pickle/export.pkl" --allow-pickle --gpus-per-actor "$(gpus 1)"
else
    for s in onnx_gpu forward probe score_g1 score_g0.5 score_g0 score_pickle; do skip "$s" "no trained model"; done
fi

step train_cpu train_cpu_stays_off_gpu
step train_util train_util

N_GPUS=0
command -v nvidia-smi >/dev/null && N_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$REHEARSE" = 1 ] || [ "$N_GPUS" -ge 2 ]; then  # rehearsed as 2 gloo ranks
    step train_nccl "${TRAIN[@]}" --workers 2 --out "$WORK/model_nccl"
else
    skip train_nccl "$N_GPUS GPU(s): 2-rank NCCL needs 2"
fi

echo
echo "== summary ($(($(date +%s) - T0))s, logs in $WORK/logs)$([ "$REHEARSE" = 1 ] && echo ' REHEARSAL on the CPU')"
printf '%s\n' "${RESULTS[@]}"
if printf '%s\n' "${RESULTS[@]}" | grep -q ' FAIL '; then exit 1; fi
exit 0
