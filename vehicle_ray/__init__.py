"""vehicle_ray: the fastai emergency-vehicle recipe as a distributed batch system on Ray.

The pipelines are packages: train/ (Ray Train fine-tuning → the model artifact), score/ (Ray Data batch
scoring → Parquet) and report/ (evaluate, review, promote; it may use both pipelines). Entry points on
top: cli.py (the commands), cli_support.py (aliases, env vars, grouped help, --json), cli_reference.py
(docs/cli.md) and demo.py. The shared modules below import none of those (pyproject.toml's
[tool.importlinter], `make lint`): data.py (CSV validation, image roots, split), location.py (a local
path or URI as filesystem + base), columns.py (the Parquet column names), durable.py (atomic, fsynced
local writes), recipe.py (the typed TOML recipe, the metric table), artifact.py (the model directory's
format and reader), network.py (the arch and batch transforms; the torch model from an artifact),
tta.py (fastai-semantics TTA), adaptive_tta.py (the plain-pass confidence gate), calibration.py
(temperature scaling, ECE), decision.py (the operating point, the decision column), monitoring.py
(class rates, confidence, drift), plotting.py (matplotlib, training curves), cluster.py (connecting to
Ray), device.py (the device follows the plan), tracking.py (MLflow), errors.py (exit codes), log.py and
sample_data.py; configs/ holds the bundled recipes.
"""

import warnings

# fastai still decorates a few helpers with torch.jit.script; torch 2.14 warns on every import, in
# every Ray worker. It is noise for our users, not something they can act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

__version__ = "0.1.0"
