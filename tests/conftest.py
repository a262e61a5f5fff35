"""Shared test settings: quiet Ray, CPU only, few threads."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
# Frozen-backbone features of the tests' trials (Ray's workers included) stay out of the
# user's cache folder.
if "FINETUNE_SWEEPS_FEATURE_CACHE" not in os.environ:
    os.environ["FINETUNE_SWEEPS_FEATURE_CACHE"] = tempfile.mkdtemp(prefix="features-")
    atexit.register(shutil.rmtree, os.environ["FINETUNE_SWEEPS_FEATURE_CACHE"], True)
# So do the decoded images of their image folders (trainables.data._image_cache).
if "FINETUNE_SWEEPS_IMAGE_CACHE_DIR" not in os.environ:
    os.environ["FINETUNE_SWEEPS_IMAGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="images-")
    atexit.register(shutil.rmtree, os.environ["FINETUNE_SWEEPS_IMAGE_CACHE_DIR"], True)

import torch  # noqa: E402

# Two cores are shared by the test process and Ray's workers: oversubscribing them with
# intra-op threads makes small models many times slower.
torch.set_num_threads(1)
