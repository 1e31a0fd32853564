"""Scoring pipeline: driver.py (validate, plan, run, commit) over options.py (validated options),
planning.py (actor-pool sizing), listing.py (listing → Parquet manifest, incremental filter),
decode.py (Ray Data CPU decode tasks), predictor.py (the model actor and its backends), tta.py
(fastai-semantics TTA on decoded batches) and store.py (the output directory and its exactly-once
commit protocol).
"""
