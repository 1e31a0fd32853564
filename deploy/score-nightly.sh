#!/usr/bin/env bash
# Submit the nightly incremental scoring job and exit with what it meant for a scheduler:
#   0 done · 2 bad usage or input · 3 committed, but drifted beyond --fail-on-drift (alert)
#   · 75 another run holds the output (try later) · 69 the cluster gave no GPU/CPU for the model actors
#   within --wait-for-resources (try later) · 76 this run lost the output's lease to another run
#   (stalled beyond the TTL; its commits were refused after that: retry) · 1 anything else.
# `ray job submit` only knows succeeded/failed; the job's own log (which it streams) says which.
# Usage: RAY_ADDRESS=http://ray-head:8265 deploy/score-nightly.sh --model ... --input ... --output ... --incremental
# Ray 2.60 clusters with token authentication need RAY_AUTH_MODE=token and the cluster's token in
# ~/.ray/auth_token or RAY_AUTH_TOKEN; this script defaults RAY_AUTH_MODE to token (set it to
# "disabled" for a cluster without tokens).
set -uo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the job-submission address of the head, e.g. http://ray-head:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
ray job submit --working-dir . \
    --runtime-env-json '{"excludes": [".venv", ".git", "demo_output", "bench_output"]}' \
    --entrypoint-num-cpus 0 -- python jobs/score.py "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    if grep -q '^Busy: ' "$log"; then rc=75; elif grep -q '^Drift: ' "$log"; then rc=3
    elif grep -q '^Unavailable: ' "$log"; then rc=69
    elif grep -q '^Lease lost: ' "$log"; then rc=76
    elif grep -q '^Error: ' "$log"; then rc=2; else rc=1; fi
fi
exit "$rc"
