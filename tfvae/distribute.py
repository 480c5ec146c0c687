"""Training on several devices and machines with ``tf.distribute``.

``--strategy`` names an entry of :data:`STRATEGIES`: ``default`` (one
device, TensorFlow's default strategy), ``mirrored`` (every local GPU, or
every logical CPU device) or ``multiworker`` (several processes or machines;
TensorFlow reads the cluster from the ``TF_CONFIG`` environment variable, the
library never does). Models are built and compiled under ``strategy.scope()``,
so their variables are mirrored and Keras splits each batch across replicas.

Under MultiWorkerMirroredStrategy saving is collective: every worker must
call ``tf.train.Checkpoint.write`` and ``save_weights``. Non-chief workers
write to :func:`scratch_dir` and delete it; only the chief keeps its files.

This module imports only TensorFlow: training, the models and the estimators
import it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tfvae._keras import tf


def _mirrored() -> tf.distribute.MirroredStrategy:
    # Every GPU; without GPUs every logical CPU device (MirroredStrategy's own
    # default would be the first CPU alone), so that CPU runs and tests that
    # split the CPU into logical devices get one replica per device.
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


#: ``--strategy`` name -> factory of a ``tf.distribute.Strategy``.
STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "default": tf.distribute.get_strategy,
    "mirrored": _mirrored,
    "multiworker": tf.distribute.MultiWorkerMirroredStrategy,
}


_made: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The strategy called ``name`` in :data:`STRATEGIES` (validated by Config).

    One strategy per name and process: two MirroredStrategy objects in one
    process number their collective operations alike, and the second one's
    all-reduces fail ("Shape mismatch in the collective instance"); a
    multi-worker strategy can only be set up once per process anyway.

    Example:
      >>> strategy = make_strategy("mirrored")
      >>> with strategy.scope():
      ...     model = tfvae.GaussianVAE(input_dim=784, latent_dim=2)
      ...     model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
      >>> model.fit(x_train, epochs=5, batch_size=256)  # 256 split across replicas
    """
    if name == "default":
        return STRATEGIES[name]()
    if name not in _made:
        _made[name] = STRATEGIES[name]()
    return _made[name]


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process keeps files: always, except non-chief multi-worker tasks.

    The chief is the task of type ``chief``, or worker 0 when the cluster has
    no chief (TensorFlow's convention).
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextmanager
def scratch_dir(strategy: tf.distribute.Strategy | None = None):
    """A folder a non-chief worker saves into and that is removed afterwards.

    Yields None on the chief (which saves to the real place) and a temporary
    folder elsewhere, so every worker takes part in collective saving while
    only the chief's copy survives.
    """
    if is_chief(strategy):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="tfvae-worker-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def global_mean(x):
    """Mean of ``x`` over the global batch: across replicas when there are several.

    In a replica context with more than one replica the sums and counts are
    all-reduced, so every replica gets the same value (exact also
    when the last batch splits unevenly); otherwise this is ``tf.reduce_mean``.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tf.reduce_mean(x)
    x = tf.convert_to_tensor(x)
    totals = tf.stack([tf.reduce_sum(x), tf.cast(tf.size(x), x.dtype)])
    totals = ctx.all_reduce(tf.distribute.ReduceOp.SUM, totals)
    return totals[0] / totals[1]


def replica_share(loss):
    """``loss / num_replicas``: apply_gradients sums the replicas' gradients.

    Each replica's loss is the mean over its own share of the batch, so
    dividing by the replica count makes the summed gradient the gradient of
    the global-batch mean (as tf_keras's ``compute_loss`` does).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return loss
    return loss / ctx.num_replicas_in_sync
