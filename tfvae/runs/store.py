"""Loading a run back: its configuration, its model and weights, its record.

Nothing is loaded with pickle: configs and status are JSON, weights HDF5
read by Keras into a model rebuilt from its config, extras (the
autoencoder's mixture) ``.npz`` + JSON through :mod:`tfvae.runs.families`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from tfvae import files
from tfvae.errors import ConfigError, RunDirError
from tfvae.runs import layout, record
from tfvae.runs.families import family


@dataclasses.dataclass
class Run:
    """A training run on disk, with its configuration, metrics and model.

    Attributes:
      path: the run directory.
      config: its :class:`tfvae.Config`.
      model: the trained model (best checkpoint unless asked otherwise).
      status: ``run.json``.
      history: per-epoch metrics.
      role: ``"chief"`` for the process that wrote the run; in a multi-worker
        run the other workers get ``"worker N"`` (they write nothing).

    Example:
      >>> run = tfvae.load_run("runs/my-run")
      >>> run.model.sample(16, seed=0).shape
      (16, 784)
    """

    path: Path
    config: object
    model: object
    status: dict
    history: list
    role: str = "chief"

    @property
    def evaluation(self) -> dict | None:
        """``evaluation.json`` (test figures), or None before the run finished."""
        path = self.path / layout.EVALUATION
        return files.read_json(path, "evaluation") if path.is_file() else None


def load_config(run_dir):
    """The :class:`tfvae.Config` of a run directory."""
    from tfvae.config import Config

    run_dir = layout.check_run_dir(run_dir)
    data = files.read_json(run_dir / layout.CONFIG, "configuration")
    try:
        return Config.from_dict(data)
    except ConfigError as exc:
        raise RunDirError(f"{run_dir / layout.CONFIG} is not a valid tfvae configuration: "
                          f"{exc}") from None


def build_model(config):
    """Builds an untrained model from a Config whose data fields are set."""
    return family(config.model).build(config)


def save_weights(model, path) -> None:
    """Saves the model's weights to ``path`` (``.weights.h5``), never a half-written file.

    Keras' ``save_weights`` also writes every object the model reaches, its
    optimizers included: with Adam two more copies of every weight (the main
    job's VAE: 7.9 MB instead of 2.6, 28 ms instead of 17 per epoch). A run's
    optimizer state lives in its training state (``checkpoints/state/``), so
    these files hold the weights (and the metric trackers' sums), in Keras'
    own format with the optimizers left out; ``model.load_weights`` reads them (a model whose
    optimizer has slots then logs that it skipped them; :func:`load_weights`
    does not). To save one model again and again, use a :class:`WeightsWriter`.
    """
    WeightsWriter(model)(path)


class WeightsWriter:
    """:func:`save_weights` for one model, Keras' walk of its objects done once.

    Keras finds what to save by walking every attribute of every layer, and
    evaluates properties on the way (a ``Sequential``'s ``get_config``, among
    others): two thirds of the 16 ms that saving the main job's weights took
    each epoch. What the walk finds, which objects write their variables under
    which names, does not change while a model trains: the writer walks once
    (as Keras does, :func:`_weights_plan`) and then only writes. Each file
    also gets the SHA-256 digest of its weights (root attribute
    :data:`DIGEST_ATTR`, hashed as they are written: 1.5 ms for the main job's
    2.6 MB), which :func:`load_weights` checks.
    """

    def __init__(self, model):
        self.model = model
        self._plan = None

    def __call__(self, path) -> None:
        if self._plan is None:
            self._plan = _weights_plan(self.model)
        with files.atomic_path(path) as tmp:
            if self._plan is False:  # no Keras walk to follow: Keras' own save
                self.model.save_weights(str(tmp))
                return
            from tf_keras.src.saving import saving_lib

            store = saving_lib.H5IOStore(str(tmp), mode="w")
            try:
                digests = {}
                for inner_path, trackable in self._plan:
                    trackable.save_own_variables(_Digesting(store.make(inner_path), digests))
                store.h5_file.attrs[DIGEST_ATTR] = _combined(digests)
            finally:
                store.close()


#: The root attribute of a weights file holding the digest of its weights.
DIGEST_ATTR = "tfvae_sha256"


class WeightsChanged(ValueError):
    """A weights file whose values no longer match the digest written with them."""


class _Digesting:
    """A Keras weights-store group that also digests what is stored in it."""

    def __init__(self, group, digests: dict):
        self._group, self._digests = group, digests

    def __setitem__(self, key, value):
        self._group[key] = value
        self._digests[f"{self._group.name}/{key}"] = _digest(value)


def _digest(value) -> str:
    import numpy as np

    array = np.ascontiguousarray(value)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array.reshape(-1)).cast("B"))  # no copy: 1.5 ms for 2.6 MB
    return digest.hexdigest()


def _combined(digests: dict) -> str:
    return hashlib.sha256("".join(f"{k} {digests[k]}\n" for k in sorted(digests)).encode()
                          ).hexdigest()


def check_digest(path) -> bool:
    """Whether ``path``'s weights match the digest tfvae wrote into it.

    True when they match; False for a file without one (Keras' own, or one an
    earlier tfvae wrote). Raises :class:`WeightsChanged` when the
    file was edited or damaged after it was written (a same-size edit that
    HDF5, which keeps no checksums of its data, would read without a word).
    """
    import h5py

    with h5py.File(path, "r") as f:
        written = f.attrs.get(DIGEST_ATTR)
        if written is None:
            return False
        digests = {}
        f.visititems(lambda name, obj: digests.__setitem__(obj.name, _digest(obj[()]))
                     if isinstance(obj, h5py.Dataset) else None)
    if _combined(digests) != (written.decode() if isinstance(written, bytes) else written):
        raise WeightsChanged(f"{path}: its weights do not match the digest written with them")
    return True


def load_weights(model, path) -> None:
    """Loads a ``.weights.h5`` file of :func:`save_weights` (or Keras') into ``model``.

    The optimizers' slots are left as they are, whether or not the file has them.
    A file tfvae wrote is checked against its digest first (:func:`check_digest`).
    """
    check_digest(path)
    try:
        from tf_keras.src.saving import saving_lib

        walk, store_class = saving_lib._load_state, saving_lib.H5IOStore
    except (ImportError, AttributeError):
        model.load_weights(str(path))
        return
    store = store_class(str(path), mode="r")
    try:
        walk(model, weights_store=store, assets_store=None, inner_path="",
             visited_trackables=_optimizer_ids(model))
    finally:
        store.close()


def _optimizer_ids(model) -> set:
    return {id(o) for o in (getattr(model, "optimizer", None),
                            getattr(model, "prior_optimizer", None)) if o is not None}


def _weights_plan(model):
    """``[(inner_path, object)]``: who writes its variables where in a weights file.

    The walk of tf_keras' ``saving_lib._save_state`` (the optimizers marked
    visited first, so they are left out), recording instead of writing;
    ``tests/test_resume.py`` checks the files against Keras' own walk.
    False where that Keras-internal walk is missing.
    """
    try:
        from tf_keras.src.saving import saving_lib
        from tf_keras.src.utils import generic_utils

        walk, is_keras = saving_lib._walk_trackable, saving_lib._is_keras_trackable
        snake = generic_utils.to_snake_case
    except (ImportError, AttributeError):
        return False
    from tfvae._keras import tf

    join = tf.io.gfile.join
    plan, visited = [], _optimizer_ids(model)

    def visit(trackable, inner_path):
        if id(trackable) in visited:
            return
        if hasattr(trackable, "save_own_variables"):
            plan.append((inner_path, trackable))
        visited.add(id(trackable))
        for attr, child in walk(trackable):
            if is_keras(child):
                visit(child, join(inner_path, attr))
            elif isinstance(child, (list, dict, tuple, set)):
                visit_container(child, join(inner_path, attr))

    def visit_container(container, inner_path):
        used = {}
        for trackable in (container.values() if isinstance(container, dict) else container):
            if not is_keras(trackable) or id(trackable) in visited:
                continue
            name = snake(trackable.__class__.__name__)
            if name in used:
                used[name] += 1
                name = f"{name}_{used[name]}"
            else:
                used[name] = 0
            visit(trackable, join(inner_path, name))

    visit(model, "")
    return plan


def checkpoint_path(run_dir, which: str) -> Path:
    """``best`` (falling back to ``last``) or ``last`` weights of a run."""
    if which not in ("best", "last"):
        raise RunDirError(f"which must be 'best' or 'last', got {which!r}")
    name = layout.BEST if which == "best" else layout.LAST
    ckpt = layout.inside(run_dir, f"{layout.CHECKPOINTS}/{name}")
    if not ckpt.is_file() and which == "best":
        ckpt = layout.inside(run_dir, f"{layout.CHECKPOINTS}/{layout.LAST}")
    if not ckpt.is_file():
        raise RunDirError(
            f"{run_dir} has no checkpoint: the run never finished an epoch; train it again"
        )
    return ckpt


def load_model(run_dir, which: str = "best", extras: bool = True, into=None):
    """Rebuilds the model of a run from its config and loads its weights.

    Args:
      run_dir: a tfvae run directory.
      which: ``"best"`` (lowest validation loss) or ``"last"`` (last completed epoch).
      extras: also load what the model keeps outside its weights (the
        autoencoder's mixture); training turns this off before it fits them.
      into: a model of the run's configuration to load the weights into
        instead of building one (training reuses the model it trained).

    Returns:
      ``(model, config)``.
    """
    run_dir = layout.check_run_dir(run_dir)
    config = load_config(run_dir)
    ckpt = checkpoint_path(run_dir, which)
    model = build_model(config) if into is None else into
    try:
        load_weights(model, ckpt)
    except WeightsChanged:
        other = "last" if ckpt.name == layout.BEST else "best"
        raise RunDirError(
            f"checkpoint {ckpt} was changed after tfvae wrote it: its weights do not match "
            f"the digest written with them (edited or damaged). The {other} checkpoint may "
            f"be intact (`--checkpoint {other}` of evaluate and export); or train again"
        ) from None
    except Exception as exc:  # h5py/Keras raise many types for a bad file
        raise RunDirError(
            f"checkpoint {ckpt} cannot be read ({type(exc).__name__}: {exc}); "
            "it is corrupt or from another model configuration"
        ) from None
    spec = family(config.model)
    if extras and spec.load_extras is not None:
        spec.load_extras(model, run_dir)
    return model, config


def load_run(run_dir, which: str = "best") -> Run:
    """Loads a run directory: its config, status, metric history and trained model.

    Args:
      run_dir: the ``--out`` of ``tfvae train`` (or of :func:`tfvae.train`).
      which: ``"best"`` or ``"last"`` checkpoint.

    Returns:
      A :class:`Run`; ``run.model`` is ready for ``sample``, ``reconstruct`` and
      :func:`tfvae.evaluate`.
    """
    run_dir = layout.check_run_dir(run_dir)
    model, config = load_model(run_dir, which)
    metrics = run_dir / layout.METRICS_JSON
    history = files.read_json(metrics, "metrics") if metrics.is_file() else []
    return Run(path=run_dir, config=config, model=model, status=record.read_status(run_dir),
               history=history)
