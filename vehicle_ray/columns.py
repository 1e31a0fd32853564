"""The row schema of scoring's Parquet files: the column names that every writer and reader (score/,
report/, and the shared modules that build rows, e.g. tta.py) spells through these constants, so a name
cannot drift between the file that writes a column and the ones that read it.

The names are a contract (DESIGN.md: additive changes only): a column may be added here, never renamed.
A leaf module: it imports nothing from vehicle_ray, so any layer may use it.
"""

from __future__ import annotations

# The manifest (listing.py) and the decode tasks' batches
PATH = "path"  # the file's full path or URI; every row of every kind has it
REL = "rel"  # the manifest's name relative to the image root (what decode reads)
IMAGE = "image"  # a decode batch's decoded pixels (never written to Parquet)

# predictions/ (the Predictor's rows; errors/ and _deferred/ keep a few of them)
LABEL = "label"  # the predicted class, as a string
CONFIDENCE = "confidence"
PROBABILITIES = "probabilities"  # in the order of model.json's classes
CLASS_PROBABILITIES = "class_probabilities"  # the same as a class -> probability map
PLAIN_PROBABILITIES = "plain_probabilities"  # --emit-plain: the plain pass's own probabilities
DECISION = "decision"  # the decision policy's call: a class or "uncertain"
CALIBRATED = "calibrated"
MODEL_ID = "model_id"
MODEL_SHA256 = "model_sha256"
MODEL_REGISTRY_NAME = "model_registry_name"
MODEL_REGISTRY_VERSION = "model_registry_version"
TTA_N = "tta_n"  # the TTA settings a row was scored with (tta.TTASettings.as_columns)
TTA_BETA = "tta_beta"
TTA_MAX = "tta_max"
TTA_PASSES = "tta_passes"  # passes a row got: 1 (plain alone) or n+1 (adaptive TTA sends only some on)
TTA_PLAIN_PRECISION = "tta_plain_precision"  # what the actor ran: a GPU's bf16 or fp16
TTA_AUG_PRECISION = "tta_aug_precision"
TTA_PRECISIONS = (TTA_PLAIN_PRECISION, TTA_AUG_PRECISION)
EXACT_DECODE = "exact_decode"
SCORED_AT = "scored_at"

# errors/ and _deferred/
ERROR = "error"  # the message; null on a scored row of the pipeline (split_rows drops it from predictions/)
ERROR_KIND = "error_kind"  # decode.error_kind's class of the message (--retry-errors selects by it)

# a read of a whole dataset adds its hive partition
RUN = "run"

# evaluate's predictions.parquet: the scoring rows joined with the truth (promote and review read it)
ACTUAL = "actual"  # the labeled class
P_ACTUAL = "p_actual"  # the probability the model gave the labeled class
LOSS = "loss"  # -log(p_actual)
