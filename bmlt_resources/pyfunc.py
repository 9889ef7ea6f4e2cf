"""The model as logged to MLflow: a pyfunc that scores raw order-book windows (``TrackedMlflow``
logs and loads it; ``bmlt_assets.scoring`` is its old path, kept for models registered there).

Input (a dict of arrays, the same layout as ``book_tensors``):

* ``book``: (B, T, L, 4, K) float32 base-array windows, oldest step first;
* ``mids``: (B, T, K) float64 mid prices of the same steps;
* ``timestamp_ns``: (B,) int64 time of each window's last step.

Output: (B, horizons, classes) float32 class probabilities, calibrated by each head's temperature
and class bias fitted on the validation part. Normalization statistics fitted on the training part
and the calibration travel inside the checkpoint, so scoring needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.pyfunc import PyFuncModel, PythonModel, PythonModelContext

from bmlt_assets.core.checkpoint import load_checkpoint, spec_calibration
from bmlt_assets.core.windows import calendar, with_mid_path


class OrderBookPyfunc(PythonModel):
    # MLflow's own opt-out of type-hint validation (its ChatModel's): without it, defining the class
    # warns, in raw colour codes, that predict has no type hints, in every command that imports it.
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.load(Path(context.artifacts["checkpoint"]))

    def load(self, checkpoint: Path) -> OrderBookPyfunc:
        self.model, self.normalizer, self.spec = load_checkpoint(checkpoint)
        return self

    # No type hints on predict: MLflow would read them as a schema; the logged signature is the schema.
    def predict(self, context, model_input, params=None):
        book = np.array(model_input["book"], dtype=np.float32)  # a private copy: features are built in place
        windows = self.normalizer.apply(with_mid_path(book, np.asarray(model_input["mids"], dtype=np.float64)))
        times = calendar(np.asarray(model_input["timestamp_ns"], dtype=np.int64))
        with torch.no_grad():
            logits = self.model(torch.from_numpy(windows), torch.from_numpy(times))
        heads = zip(spec_calibration(self.spec), logits.numpy().transpose(1, 0, 2))
        return np.stack([calibration.probabilities(head) for calibration, head in heads], axis=1).astype(np.float32)


def score_steps(
    model: PyFuncModel,
    base: np.ndarray,
    mids: np.ndarray,
    timestamps: np.ndarray,
    steps: np.ndarray,
    window: int,
    batch: int = 512,
) -> np.ndarray:
    """(N, H, C) probabilities of a logged model for the windows ending at ``steps``."""
    out = []
    for start in range(0, len(steps), batch):
        chunk = steps[start : start + batch]
        index = chunk[:, None] + np.arange(1 - window, 1)
        out.append(
            model.predict(
                {
                    "book": np.asarray(base[index], np.float32),
                    "mids": np.asarray(mids[index]),
                    "timestamp_ns": timestamps[chunk],
                }
            )
        )
    return np.concatenate(out)
