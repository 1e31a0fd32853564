"""Training pipeline: driver.py (validate, launch, publish; dry_run.py prints the plan instead) → launch.py
(what the Ray Train controller unpickles: the worker entry point and the epoch printer) → loop.py (per-
worker fastai loop) with callback.py (the fastai ↔ Ray Train callbacks) and what they use: sharding.py
(each rank's rows), batchnorm.py (statistics over the global batch), collectives.py (gathers, broadcasts,
metric merging) and checkpoint_state.py (the run's position and checkpoint files); learner.py (DataLoaders
+ vision_learner), hardware.py (how a worker uses its device), staging.py (object-storage images copied to
each node), validation.py (the end-of-run validation pass through TTA) and artifact_writer.py (the
artifact's files, model.json and the publish). config.py holds the options and the worker config (a leaf:
no torch, no fastai); tracking.py logs to MLflow; lr_find.py runs fastai's learning-rate finder in one Ray
task; ray_private.py names every private Ray Train import.
"""
