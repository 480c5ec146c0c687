"""Run directories: layout and lock, the training record, model families, loading.

* :mod:`~tfvae.runs.layout`: file names, path checks and the run lock
  (standard library only, so the CLI checks paths before importing TensorFlow);
* :mod:`~tfvae.runs.record`: ``checkpoints/resume.json``, the authoritative
  training record, and the files derived from it;
* :mod:`~tfvae.runs.families`: what runs do per model family;
* :mod:`~tfvae.runs.store`: loading a run's config, model and weights;
* :mod:`~tfvae.runs.run_data`: the data a run's configuration names;
* :mod:`~tfvae.runs.recorder`: :class:`RunRecorder`, the callback that writes a run every epoch.

Only the layout is imported with the package; the rest is imported on
first use (PEP 562), as :mod:`tfvae` does.
"""

from __future__ import annotations

import importlib

from tfvae.runs.layout import (  # noqa: F401  (re-exported names)
    BEST,
    CHECKPOINTS,
    CONFIG,
    EVALUATION,
    FIGURES,
    LAST,
    LOCK,
    METRICS_CSV,
    METRICS_JSON,
    RESUME,
    STATE,
    STATUS,
    TENSORBOARD,
    RunLock,
    check_new_out,
    check_run_dir,
    create_run_dir,
)

_LAZY = {
    "Run": "tfvae.runs.store",
    "load_config": "tfvae.runs.store",
    "build_model": "tfvae.runs.store",
    "load_model": "tfvae.runs.store",
    "load_run": "tfvae.runs.store",
    "save_weights": "tfvae.runs.store",
    "FAMILIES": "tfvae.runs.families",
    "Family": "tfvae.runs.families",
    "family": "tfvae.runs.families",
    "load_data": "tfvae.runs.run_data",
    "train_float": "tfvae.runs.run_data",
    "Record": "tfvae.runs.record",
    "RunRecorder": "tfvae.runs.recorder",
}


def __getattr__(name):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tfvae.runs' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
