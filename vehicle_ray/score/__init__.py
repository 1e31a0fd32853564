"""Scoring pipeline: driver.py (validate, plan, run, commit) over options.py (validated options),
dry_run.py (`--dry-run`: the same checks, then the plan), serving.py (temperatures, decisions, adaptive
TTA's gate, the drift baseline), planning.py (actor-pool sizing, which model each TTA pass runs),
listing.py (watermark walk → Parquet manifest, incremental filter, pending files), decode.py (Ray Data
CPU decode tasks, transient-read retries), model.py (ModelSpec), predictor.py (the model actor and its
backends), augment.py (fused TTA augmentation), chunk_writer.py (commits by count and time), store.py
(the output directory and its fenced exactly-once commit protocol), lease.py (one writer per output),
done_index.py (incremental lookups), progress.py (progress lines, timings) and pause.py (test-only pause
points). Shared with the other layers: the Parquet column names every writer and reader uses
(vehicle_ray/columns.py), the output's location (vehicle_ray/location.py), the atomic, fsynced local
writes (vehicle_ray/durable.py) and TTA's blend itself (vehicle_ray/tta.py).
"""
