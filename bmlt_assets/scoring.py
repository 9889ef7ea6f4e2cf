"""The old home of the MLflow pyfunc, now ``bmlt_resources.pyfunc`` beside the MLflow resource.

Kept because MLflow pickles the logged ``python_model`` by reference to its class: models
registered before the move name ``bmlt_assets.scoring.OrderBookPyfunc`` and load through here.
"""

from bmlt_resources.pyfunc import OrderBookPyfunc, score_steps

__all__ = ["OrderBookPyfunc", "score_steps"]
