"""One trial: data, models, losses, the train/evaluate loop and metrics.

Everything here but ``trial`` (the Ray layer) and ``tracking`` (the MLflow layer) is plain
PyTorch and scikit-learn, usable and testable without either.
"""
