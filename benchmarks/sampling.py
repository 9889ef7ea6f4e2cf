"""Windowed sampling from a saved dataset, in a fresh process so its resident memory is its own.

    python -m benchmarks.sampling DATASET_DIR CONFIG BATCHES

Prints JSON: batches per second and the resident memory the dataset added (bytes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.tensor_build import _status_bytes
from bmlt_assets.core.config import load_config
from bmlt_assets.core.dataset import load_dataset


def main() -> None:
    folder, config, n_batches = Path(sys.argv[1]), load_config(sys.argv[2]), int(sys.argv[3])
    before = _status_bytes("VmRSS")
    data = load_dataset(folder, config)
    rng = np.random.default_rng(0)
    steps = data.parts["train"].steps
    picks = [rng.choice(steps, config.training.batch_size) for _ in range(n_batches)]
    started = time.perf_counter()
    for batch in picks:
        data.source.inputs(batch)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "batches_per_s": n_batches / seconds,
                "resident_added": _status_bytes("VmRSS") - before,
                "base_bytes": data.source.base.nbytes,
            }
        )
    )


if __name__ == "__main__":
    main()
