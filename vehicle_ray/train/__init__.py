"""Training pipeline: driver.py (validate, launch, publish) → launch.py (what the Ray Train controller
unpickles: the worker entry point and the epoch printer) → loop.py (per-worker fastai loop) with
callback.py (the fastai ↔ Ray Train callbacks) and learner.py (DataLoaders + vision_learner);
config.py holds the options and the worker config (a leaf: no torch, no fastai); lr_find.py runs
fastai's learning-rate finder in one Ray task.
"""
