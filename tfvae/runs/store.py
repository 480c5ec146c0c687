"""Loading a run back: its configuration, its model and weights, its record.

Nothing is loaded with pickle: configs and status are JSON, weights HDF5
read by Keras into a model rebuilt from its config, extras (the
autoencoder's mixture) ``.npz`` + JSON through :mod:`tfvae.runs.families`.
"""

from __future__ import annotations

import dataclasses
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
    does not).
    """
    with files.atomic_path(path) as tmp:
        _weights_file(model, tmp, "w")


def load_weights(model, path) -> None:
    """Loads a ``.weights.h5`` file of :func:`save_weights` (or Keras') into ``model``.

    The optimizers' slots are left as they are, whether or not the file has them.
    """
    _weights_file(model, path, "r")


def _weights_file(model, path, mode: str) -> None:
    """Writes (``"w"``) or reads (``"r"``) a weights file, the optimizers left out.

    Keras' saving walks the model's objects, skipping those already visited:
    the optimizers are marked visited first. Where that Keras-internal walk is
    missing, Keras' own ``save_weights``/``load_weights`` run instead.
    """
    try:
        from tf_keras.src.saving import saving_lib

        walk = saving_lib._save_state if mode == "w" else saving_lib._load_state
        store_class = saving_lib.H5IOStore
    except (ImportError, AttributeError):
        (model.save_weights if mode == "w" else model.load_weights)(str(path))
        return
    skip = {id(o) for o in (getattr(model, "optimizer", None),
                            getattr(model, "prior_optimizer", None)) if o is not None}
    store = store_class(str(path), mode=mode)
    try:
        walk(model, weights_store=store, assets_store=None, inner_path="",
             visited_trackables=skip)
    finally:
        store.close()


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
