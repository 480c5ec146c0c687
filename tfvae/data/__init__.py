"""Data sets, binarization, splits and ``tf.data`` pipelines.

Everything a model sees goes through this package:

* :func:`load_dataset` (:mod:`~tfvae.data.load`, which picks
  :mod:`~tfvae.data.sources` or :mod:`~tfvae.data.tfds`) returns a
  :class:`DataSet` of raw values (uint8 pixels, sklearn digits
  0..16, or floats) from the embedded ``mnist-10k`` set, sklearn's
  ``digits``, a user path (a directory of MNIST-format IDX ``.gz`` files, a
  ``.npz`` or a ``.npy``) or TensorFlow Datasets.
* :func:`prepare` (:mod:`~tfvae.data.splits`) turns it into :class:`Splits`
  under a data mode (:data:`MODES`, :mod:`~tfvae.data.modes`): training rows
  the pipelines process, and fixed validation and test rows.
* :func:`blocks` builds tfvae's fused training pipeline (blocks of batches a
  model trains on in one compiled loop); :func:`make_pipeline` Keras' per-batch
  one (:mod:`~tfvae.data.pipelines`).
* :func:`binarize_static` and friends (:mod:`~tfvae.data.binarize`) follow
  the shared benchmark protocol bit for bit.
* A folder of images (:class:`FolderDataSet`, :mod:`~tfvae.data.folders`) is
  read file by file: :class:`StreamSplits` (:mod:`~tfvae.data.streams`)
  applies the same data modes as its images are decoded.

Only numpy and the standard library are imported with the package;
TensorFlow, TensorFlow Datasets and scikit-learn are imported inside the
functions that need them.
"""

from tfvae.data.binarize import (
    binarize_static,
    binarize_threshold,
    dequantize_static,
    is_binary,
    scale,
)
from tfvae.data.folders import FolderDataSet
from tfvae.data.load import load_dataset
from tfvae.data.modes import MODES, TEST_SEED, TRAIN_SEED, Mode
from tfvae.data.pipelines import BlockPipeline, blocks, make_pipeline
from tfvae.data.sources import (
    EMBEDDED,
    LOCAL_DATASETS,
    SPLIT_10K,
    DataSet,
    from_arrays,
    with_image_shape,
)
from tfvae.data.splits import Splits, data_warnings, prepare, validation_rows
from tfvae.data.streams import StreamSplits
from tfvae.errors import ConfigError, DataError
from tfvae.fused_blocks import BLOCK_STEPS, pack_bits, unpack_bits

__all__ = [
    "BLOCK_STEPS", "EMBEDDED", "LOCAL_DATASETS", "MODES", "SPLIT_10K", "TEST_SEED",
    "TRAIN_SEED", "BlockPipeline", "ConfigError", "DataError", "DataSet", "FolderDataSet",
    "Mode", "Splits", "StreamSplits", "with_image_shape",
    "binarize_static", "binarize_threshold", "blocks", "data_warnings", "dequantize_static",
    "from_arrays", "is_binary", "load_dataset", "make_pipeline", "pack_bits", "prepare",
    "scale", "unpack_bits", "validation_rows",
]
