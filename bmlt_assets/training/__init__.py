"""The training wing: ``trained_model`` and the plain functions and processes behind it.

- ``asset.py``: the ``trained_model`` asset, a thin shell over the workflow;
- ``workflow.py``: the fit (walk-forward folds, tuning in this process or by worker processes,
  training here or by torchrun's ranks, the resumable state) and the model's commit, as plain
  functions that run and are tested without Dagster;
- ``training_worker.py``: one torchrun rank
  (``python -m torch.distributed.run ... -m bmlt_assets.training.training_worker JOB``);
- ``tuning_worker.py``: the trial workers of one study (``bmlt tune-worker``), and the local
  worker processes the fit starts.

Nothing is imported here: a torchrun rank imports its worker without Dagster or MLflow.
"""
