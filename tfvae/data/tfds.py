"""TensorFlow Datasets, offline first and failing fast.

A data set prepared in the TFDS data directory loads without the network.
Otherwise the download host is probed with a short timeout before TFDS is
asked to download (offline, TFDS itself retries for minutes), and the error
names the offline options.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np

from tfvae.data.sources import LOCAL_DATASETS, DataSet, from_arrays
from tfvae.errors import DataError

#: TFDS data sets known to hold images (any other name is still tried).
TFDS_DATASETS = ("mnist", "fashion_mnist", "binarized_mnist", "kmnist", "emnist")
#: Host probed before TFDS tries to download anything (it retries for minutes).
TFDS_HOST = ("storage.googleapis.com", 443)
OFFLINE_OPTIONS = (
    "Offline options: '--dataset mnist-10k' (embedded MNIST test set, 9,000/1,000), "
    "'--dataset digits' (scikit-learn 8x8 digits), '--data-dir PATH' (a directory of "
    "MNIST-format IDX .gz files such as /usr/share/datasets/fashion-mnist from Debian's "
    "dataset-fashion-mnist package, a .npz with x_train/x_test, or a .npy), or prepare "
    "the TFDS data set on a connected machine and point '--tfds-data-dir' at a copy of "
    "its data directory."
)


def host_reachable(timeout: float, host: tuple | None = None) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds.

    The connect runs in a daemon thread so that a hanging DNS lookup (which
    ``socket``'s timeout does not bound) cannot delay the answer either.
    """
    host = host or TFDS_HOST
    result = []

    def probe():
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def load(name: str, tfds_data_dir, timeout: float) -> DataSet:
    """Loads a TFDS data set offline when prepared, else downloads it if reachable."""
    try:
        import tensorflow_datasets as tfds  # lazy: heavy, pulls TensorFlow in
    except ImportError as e:
        raise DataError(
            f"data set {name!r} needs tensorflow-datasets, which is not installed ({e}). "
            + OFFLINE_OPTIONS
        ) from e

    data_dir = None if tfds_data_dir is None else os.fspath(tfds_data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(
            f"unknown data set {name!r}: not a local data set {LOCAL_DATASETS} nor a TFDS "
            f"data set (known TFDS image sets: {', '.join(TFDS_DATASETS)}); "
            "or use --data-dir PATH"
        ) from e
    except Exception as e:  # bad config names, kwargs, ...
        raise DataError(f"cannot use TFDS data set {name!r}: {e}") from e

    if not builder.is_prepared():
        where = builder.data_dir
        # Probe the download host first: TFDS itself retries for minutes offline.
        if not host_reachable(timeout):
            raise DataError(
                f"TFDS data set {name!r} is not prepared in {where} and the network is "
                f"unreachable ({TFDS_HOST[0]}:{TFDS_HOST[1]} could not be reached within "
                f"{timeout:g} s). " + OFFLINE_OPTIONS
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # network/disk errors of many kinds
            raise DataError(
                f"could not download and prepare TFDS data set {name!r} into {where}: "
                f"{e}. " + OFFLINE_OPTIONS
            ) from e

    if "image" not in builder.info.features:
        raise DataError(f"TFDS data set {name!r} has no 'image' feature; it is not images")
    arrays = {}
    for split in ("train", "test"):
        try:
            # Fixed-size batches rather than batch_size=-1 (one batch of the whole
            # split): same result, and it does not rely on the split's recorded size.
            batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=8192)))
        except Exception as e:  # unknown split, unreadable records, ...
            raise DataError(
                f"cannot read split {split!r} of TFDS data set {name!r} from "
                f"{builder.data_dir}: {e}; tfvae needs 'train' and 'test' splits"
            ) from e
        if not batches:
            raise DataError(f"split {split!r} of TFDS data set {name!r} is empty")
        x = np.concatenate([b["image"] for b in batches])
        y = np.concatenate([b["label"] for b in batches]) if "label" in batches[0] else None
        arrays[split] = (x, y)
    return from_arrays(
        name, arrays["train"][0], arrays["test"][0], arrays["train"][1], arrays["test"][1]
    )
