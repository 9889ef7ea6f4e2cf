"""The old path of the torchrun worker, now ``bmlt_assets.training.training_worker``: a training
pod whose command an earlier version built (``-m bmlt_assets.training_worker JOB``) still runs."""

import sys

from bmlt_assets.training.training_worker import TrainingJob, main

__all__ = ["TrainingJob", "main"]

if __name__ == "__main__":
    main(sys.argv[1:])
