"""Shared test settings: quiet Ray, CPU only, few threads."""

import os

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

import torch  # noqa: E402

# Two cores are shared by the test process and Ray's workers: oversubscribing them with
# intra-op threads makes small models many times slower.
torch.set_num_threads(1)
