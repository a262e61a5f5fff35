"""The edge: runs the core under Ray Tune and records it in MLflow.

The rest of ``trainables/`` is the core (data, models, losses, the training loop, metrics):
plain PyTorch that imports neither Ray nor MLflow. This package is the only part that does:
the trial function Ray calls (``trial``), its checkpoint pacing, the MLflow store and runs
(``tracking``), and the model logged for serving (``model_export``, ``served_model``).
"""
