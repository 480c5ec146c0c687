"""Run directories: layout, atomic writes, and loading a trained model back.

A run directory holds::

    config.json                 the Config (JSON), written before training
    run.json                    status, epochs completed, best epoch, data, versions
    checkpoints/last.weights.h5 weights after the last completed epoch
    checkpoints/best.weights.h5 weights with the best validation loss
    checkpoints/state/          full training state of the last epoch (weights,
                                optimizer, estimator state), for --resume
    checkpoints/resume.json     pointer to that state, epoch, metric history
    metrics.csv, metrics.json   per-epoch training and validation metrics
    evaluation.json             test-split figures after training
    tensorboard/                TensorBoard logs
    figures/*.png               reconstructions, samples, curves, latent plots

Nothing is loaded with pickle: configs and status are JSON, weights HDF5
read by Keras into a model rebuilt from its config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path

from tfvae.errors import RunDirError

CONFIG = "config.json"
STATUS = "run.json"
CHECKPOINTS = "checkpoints"
LAST = "last.weights.h5"
BEST = "best.weights.h5"
RESUME = "resume.json"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
EVALUATION = "evaluation.json"
FIGURES = "figures"
TENSORBOARD = "tensorboard"

# Model name -> (module, class). The registry sits above the model modules:
# it imports them, they never import it.
MODEL_CLASSES = {
    "gaussian": ("tfvae.models.gaussian", "GaussianVAE"),
    "bernoulli": ("tfvae.models.bernoulli", "BernoulliVAE"),
    "ae-gmm": ("tfvae.models.autoencoder", "Autoencoder"),
}


def model_class(name: str):
    import importlib

    try:
        module, attribute = MODEL_CLASSES[name]
    except KeyError:
        raise RunDirError(
            f"unknown model {name!r}; this tfvae knows {', '.join(MODEL_CLASSES)}"
        ) from None
    return getattr(importlib.import_module(module), attribute)


@contextlib.contextmanager
def quiet_keras_lambda_warning():
    """Hides tf_keras's warning about tfp layers' lambdas while weights are saved or
    loaded: tf_keras serializes layer configs as metadata there, and nothing is
    ever deserialized from that lambda (models are rebuilt from config.json)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The object being serialized includes")
        yield


def atomic_write_text(path, text: str) -> None:
    """Writes text to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_save_weights(model, path) -> None:
    """Saves weights to ``path`` (HDF5) so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")  # same suffix: same Keras weights format
    with quiet_keras_lambda_warning():
        model.save_weights(str(tmp))
    os.replace(tmp, path)


def read_json(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} is missing: the {what} cannot be read")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path} is corrupt ({what} is not valid JSON: {exc})") from None


def _inside(run_dir: Path, name: str) -> Path:
    # Paths named by configs stay inside the run directory.
    path = (run_dir / name).resolve()
    if run_dir.resolve() not in path.parents and path != run_dir.resolve():
        raise RunDirError(f"{name!r} points outside the run directory {run_dir}")
    return path


def check_run_dir(run_dir) -> Path:
    """Returns the run directory as a Path, or raises RunDirError saying what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(
            f"run directory {run_dir} does not exist; give the --out of a tfvae train"
        )
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a directory; give a tfvae run directory")
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(
            f"{run_dir} is not a tfvae run: it has no {CONFIG} (made by `tfvae train --out DIR`)"
        )
    return run_dir


@dataclasses.dataclass
class Run:
    """A training run on disk, with its configuration, metrics and model.

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

    @property
    def evaluation(self) -> dict | None:
        path = self.path / EVALUATION
        return read_json(path, "evaluation") if path.is_file() else None


def load_config(run_dir):
    from tfvae.config import Config
    from tfvae.errors import ConfigError

    run_dir = check_run_dir(run_dir)
    data = read_json(run_dir / CONFIG, "configuration")
    try:
        return Config.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise RunDirError(f"{run_dir / CONFIG} is not a valid tfvae configuration: {exc}") from None


def build_model(config):
    """Builds an untrained model from a Config whose data fields are set."""
    cls = model_class(config.model)
    return cls(**cls.config_kwargs(config))


def load_model(run_dir, which: str = "best", extras: bool = True, into=None):
    """Rebuilds the model of a run from its config and loads its weights.

    Args:
      run_dir: a tfvae run directory.
      which: ``"best"`` (lowest validation loss) or ``"last"`` (last completed epoch).
      extras: also load what the model keeps outside its weights (the
        autoencoder's mixture); training turns this off before it fits them.
      into: a model of the run's configuration to load the weights into
        instead of building one (training reuses the model it trained).
    """
    run_dir = check_run_dir(run_dir)
    config = load_config(run_dir)
    if which not in ("best", "last"):
        raise RunDirError(f"which must be 'best' or 'last', got {which!r}")
    ckpt = _inside(run_dir, f"{CHECKPOINTS}/{BEST if which == 'best' else LAST}")
    if not ckpt.is_file() and which == "best":
        ckpt = _inside(run_dir, f"{CHECKPOINTS}/{LAST}")
    if not ckpt.is_file():
        raise RunDirError(
            f"{run_dir} has no checkpoint: the run never finished an epoch; train it again"
        )
    model = build_model(config) if into is None else into
    try:
        with quiet_keras_lambda_warning():
            model.load_weights(str(ckpt))
    except Exception as exc:  # h5py/Keras raise many types for a bad file
        raise RunDirError(
            f"checkpoint {ckpt} cannot be read ({type(exc).__name__}: {exc}); "
            "it is corrupt or from another model configuration"
        ) from None
    if extras:
        model.load_extras(run_dir)
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
    run_dir = check_run_dir(run_dir)
    model, config = load_model(run_dir, which)
    status = read_json(run_dir / STATUS, "run status") if (run_dir / STATUS).is_file() else {}
    history = (
        read_json(run_dir / METRICS_JSON, "metrics") if (run_dir / METRICS_JSON).is_file() else []
    )
    return Run(path=run_dir, config=config, model=model, status=status, history=history)
