"""The data a run's configuration names, loaded and prepared as in training.

Training, evaluation, diagnostics and export all call :func:`load_data`, so
a run's test split (and, for calibration, its training rows) are always
prepared the same way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfvae import data, options
from tfvae.config import check_inference
from tfvae.errors import ConfigError


def resolve_likelihood(config, dataset) -> str:
    """The likelihood a Config leaves to the data.

    ``bernoulli`` for binary data and grey-level 8-bit pixels (binarized, the
    lab's protocol), ``logistic`` for colour 8-bit pixels (the discretized
    logistic scores them as they are), ``gaussian`` for other real-valued
    data (digits 0..16, floats).
    """
    if config.likelihood is not None:
        return config.likelihood
    if dataset.levels == 2 or (dataset.levels == 256 and dataset.image_shape[-1] == 1):
        return "bernoulli"
    return "logistic" if dataset.levels == 256 else "gaussian"


def load_data(config):
    """Loads and prepares the data a Config names; fills in its data fields.

    Sets ``config.likelihood``, ``config.init`` (when None: the start for that
    likelihood, :func:`tfvae.options.default_init`), ``config.binarize``, ``config.input_dim``,
    ``config.image_shape`` (and, for mean-field inference,
    ``config.train_examples``) from the data, and
    keeps only the prepared splits (the raw arrays are dropped, so the data set
    is held once).

    Returns:
      ``(dataset, splits)``: the :class:`tfvae.data.DataSet` (without its
      arrays) and the :class:`tfvae.data.Splits`.
    """
    dataset = data.load_dataset(config.dataset, config.data_dir, config.tfds_data_dir,
                                image_size=config.image_size, bad_images=config.bad_images)
    if config.image_shape is not None:
        dataset = data.with_image_shape(dataset, config.image_shape)
    config.likelihood = resolve_likelihood(config, dataset)
    config.init = config.init or options.default_init(config.likelihood, config.obs_scale)
    splits = data.prepare(
        dataset,
        likelihood=config.likelihood,
        binarize=config.binarize,
        val_fraction=config.val_fraction,
        seed=config.seed,
        val_size=config.val_size,
        val_order=config.val_order,
    )
    config.binarize = splits.train_mode if splits.train_mode in options.BINARIZE else "none"
    config.input_dim = int(dataset.dim)
    config.image_shape = tuple(int(s) for s in dataset.image_shape)
    config.levels = dataset.levels
    if config.inference == "mean-field":  # its table holds one row per training example
        config.train_examples = int(len(splits.train))
    check_inference(config)  # the likelihood is known now
    if config.batch_size > len(splits.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(splits.train)} "
            f"training examples; use --batch-size <= {len(splits.train)}"
        )
    if not splits.streamed:
        # Empty arrays of their own (not [:0] views, which would keep the buffers alive).
        dataset = dataclasses.replace(
            dataset, x_train=np.empty((0, dataset.dim), dataset.x_train.dtype),
            x_test=np.empty((0, dataset.dim), dataset.x_test.dtype), y_train=None, y_test=None,
        )
    return dataset, splits


def data_info(dataset, splits) -> dict:
    """What ``run.json`` records about the data."""
    return {
        "name": dataset.name,
        "train": int(len(splits.train)),
        "val": int(0 if splits.val is None else len(splits.val)),
        "test": int(len(splits.test)),
        "binarize": splits.train_mode,
        "image_shape": list(dataset.image_shape),
    }


def train_float(splits, seed: int, limit: int = 20000) -> np.ndarray:
    """A float copy of (up to ``limit`` rows of) the training split, as the model sees it."""
    return splits.train_rows(limit, seed)
