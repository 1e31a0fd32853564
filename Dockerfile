# The vehicle_ray image for every node of a cluster (head and workers; KubeRay RayJob/RayCronJob, or
# the cluster launcher's docker: section): the official Ray image of the pinned Ray, with this project
# installed as an ordinary (non-editable) wheel with its [mlflow] extra (the client that
# `score --model models:/NAME@ALIAS` and `train --mlflow` need) and the `ray job submit` entry points at /app/jobs.
#
#   make image IMAGE=YOUR_REGISTRY/vehicle-ray:0.1.0 && docker push YOUR_REGISTRY/vehicle-ray:0.1.0
#
# Base: rayproject/ray:2.60.0-py311-gpu, the CUDA flavour of Ray 2.60.0 on Python 3.11 (the versions
# pyproject.toml pins). One image serves the GPU training/scoring nodes (NCCL, CUDA user-space
# libraries) and the CPU-only head and decode nodes alike; a CPU-only cluster can build a smaller
# image with --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311 (everything else is the same).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu

FROM ${RAY_IMAGE} AS wheel
WORKDIR /home/ray/src
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users vehicle_ray ./vehicle_ray
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /home/ray/wheels .

FROM ${RAY_IMAGE}
# The base image's Ray 2.60.0 already satisfies the pin, so pip keeps it and adds torch, fastai, ...
# (the glob is expanded first: "[mlflow]" after it would be a shell character class)
COPY --from=wheel /home/ray/wheels /tmp/wheels
RUN pip install --no-cache-dir "$(ls /tmp/wheels/vehicle_ray-*.whl)[mlflow]" \
    && rm -rf /tmp/wheels \
    && vehicle-ray --help > /dev/null \
    && python -c "import mlflow; from vehicle_ray.recipe import load_recipe; load_recipe('tiny_cpu')"
COPY --chown=ray:users jobs /app/jobs
WORKDIR /app
