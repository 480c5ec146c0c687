"""What a run directory does for each model family, in one registry.

The models know nothing of run folders: this module says, per ``--model``,
which class to build with which ``Config`` fields, what extra files to save
and load next to the weights, what to fit after training and which extra
figures to draw. Adding a model family is its model class plus one
:class:`Family` entry in :data:`FAMILIES` (and its line in
:data:`tfvae.options.MODELS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tfvae import files, options
from tfvae.errors import ConfigError, RunDirError


@dataclasses.dataclass(frozen=True)
class Family:
    """How runs treat one model family.

    Attributes:
      model_class: ``"module:Class"`` of the Keras model (imported when used).
      config_fields: ``Config`` fields passed to the constructor besides
        :data:`tfvae.config.MODEL_FIELDS`.
      extra_files: files saved next to the weights (names in the run directory).
      save_extras: ``(model, run_dir)`` writes them (None: nothing to save).
      load_extras: ``(model, run_dir)`` reads them back.
      post_fit: ``(model, x_train, seed)`` fitted after training on the
        training rows as the model saw them (None: nothing to fit).
      figures: ``(model, folder, x_test) -> [paths]`` extra figures.
      note: ``config -> str | None``: a remark written into ``evaluation.json``.
      estimators: the family trains with :mod:`tfvae.estimators` (``tfvae diagnose``).
      training_path: the key of :data:`tfvae.training.PATHS` its runs must train on
        (None: the fastest for the run's architecture).
    """

    model_class: str
    config_fields: tuple[str, ...] = ()
    extra_files: tuple[str, ...] = ()
    save_extras: Callable | None = None
    load_extras: Callable | None = None
    post_fit: Callable | None = None
    figures: Callable | None = None
    note: Callable | None = None
    estimators: bool = False
    training_path: str | None = None

    def cls(self):
        module, name = self.model_class.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, config):
        """An untrained model from a Config whose data fields are set, its layers under
        the Keras policy of ``config.precision``."""
        kwargs = config.model_kwargs()
        kwargs.update({name: getattr(config, name) for name in self.config_fields})
        with compute_policy(config.precision):
            return self.cls()(**kwargs)


# ------------------------------------------------------------ precision

#: Keras' mixed-precision policy of each ``--precision`` (:data:`tfvae.options.PRECISIONS`).
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def global_precision() -> str:
    """The ``--precision`` that Keras' global policy stands for.

    Raises:
      ConfigError: the global policy is none tfvae trains under.
    """
    from tfvae._keras import keras

    name = keras.mixed_precision.global_policy().name
    for precision, policy in POLICIES.items():
        if policy == name:
            return precision
    raise ConfigError(f"Keras' global policy is {name!r}, which tfvae does not train under: "
                      f"set one of {', '.join(POLICIES.values())}, or pass precision= "
                      f"({', '.join(POLICIES)})")


def with_precision(config):
    """``config`` with its ``precision`` set: the global policy's if it has none, as a new
    run records it."""
    return config if config.precision else dataclasses.replace(config,
                                                               precision=global_precision())


@contextlib.contextmanager
def compute_policy(precision: str | None):
    """Keras' global policy set to that of ``precision`` while layers are made, then put
    back (None: the global policy as it is, as runs recorded before ``precision`` were)."""
    if precision is None:
        yield
        return
    from tfvae._keras import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


# ------------------------------------------------------------ ae-gmm extras

PROPOSAL_FILE = "proposal.json"


def _save_mixture(model, run_dir) -> None:
    model.check_ready()
    model.mixture.save(run_dir)
    files.atomic_write_json(
        Path(run_dir) / PROPOSAL_FILE,
        {"scale": [float(v) for v in model.proposal_scale], **(model.proposal_info or {})},
    )


def _load_mixture(model, run_dir) -> None:
    from tfvae.gmm import JSON_NAME, NPZ_NAME, GMMSampler

    run_dir = Path(run_dir)
    for name in (JSON_NAME, NPZ_NAME, PROPOSAL_FILE):
        if not (run_dir / name).exists():
            raise RunDirError(
                f"{run_dir / name} is missing: the autoencoder's latent mixture is "
                "incomplete; refit it with model.post_fit(x_train) and save it again"
            )
    sampler = GMMSampler.load(run_dir)
    if sampler.latent_dim != model.latent_dim:
        raise RunDirError(
            f"{run_dir / NPZ_NAME} holds a mixture over {sampler.latent_dim}-D codes "
            f"but the model's latent_dim is {model.latent_dim}"
        )
    path = run_dir / PROPOSAL_FILE
    info = files.read_json(path, "importance proposal")
    if not isinstance(info, dict) or "scale" not in info:
        raise RunDirError(f"{path} is corrupt: it has no 'scale' list")
    try:
        model.set_proposal(info["scale"], {k: v for k, v in info.items() if k != "scale"})
    except (ConfigError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path} is corrupt: {exc}") from None
    except RecursionError:
        raise RunDirError(f"{path} is corrupt: it is nested too deeply") from None
    model.mixture = sampler


def _mixture_figures(model, folder, x_test) -> list:
    from tfvae import figures

    mixture = model.mixture
    folder = Path(folder)
    columns = 10
    rows = [model.sample_component(c, columns, seed=c) for c in range(mixture.num_components)]
    paths = [figures.save_grid(
        folder / "component_samples.png", np.concatenate(rows), model.image_shape,
        f"mixture samples, one row per component (K={mixture.num_components})",
        columns=columns,
    )]
    if model.latent_dim == 2:
        codes = model.encode_numpy(np.asarray(x_test)[:2000])
        ellipses = list(zip(mixture.means, mixture.covariances, strict=True))
        paths.append(figures.save_latent_scatter(
            folder / "clusters.png", codes, mixture.predict(codes),
            title=f"clusters of test codes, latent size 2 (K={mixture.num_components})",
            ellipses=ellipses, label_name="mixture component",
        ))
    return paths


def _bernoulli_note(config) -> str | None:
    objective = options.ESTIMATORS[config.estimator].objective
    if objective == "elbo":
        return None
    return f"trained with {config.estimator}, which targets the {objective}, not the ELBO"


#: ``--model`` -> :class:`Family`; keys match :data:`tfvae.options.MODELS`.
FAMILIES = {
    "gaussian": Family("tfvae.models.gaussian:GaussianVAE"),
    "bernoulli": Family(
        "tfvae.models.bernoulli:BernoulliVAE",
        config_fields=("estimator", "baseline_decay", "num_samples", "learn_prior",
                       "temperature"),
        note=_bernoulli_note,
        estimators=True,
    ),
    "sbn": Family(
        "tfvae.models.stacked:StackedBernoulliVAE",
        config_fields=("stochastic_layers", "estimator", "baseline_decay", "num_samples",
                       "learn_prior", "temperature"),
        note=_bernoulli_note,
        estimators=True,
    ),
    "ae-gmm": Family(
        "tfvae.models.autoencoder:Autoencoder",
        config_fields=("components", "covariance"),
        extra_files=("gmm.npz", "gmm.json", PROPOSAL_FILE),
        save_extras=_save_mixture,
        load_extras=_load_mixture,
        post_fit=lambda model, x, seed: model.post_fit(x, seed=seed),
        figures=_mixture_figures,
    ),
}


def _mean_field_note(config) -> str:
    return (f"mean-field inference: the test examples' variational parameters are fitted with "
            f"{config.mean_field_eval_steps} updates; elbo is their mean-field bound, "
            "log_likelihood samples the fitted posteriors")


#: ``--inference`` other than ``amortized``: ``(model, inference)`` -> :class:`Family`.
INFERENCE = {
    ("sbn", "mean-field"): Family(
        "tfvae.models.mean_field:MeanFieldSBN",
        config_fields=("stochastic_layers", "learn_prior", "train_examples", "mean_field_steps",
                       "mean_field_eval_steps"),
        note=_mean_field_note,
        training_path="indexed",
    ),
}


def family(name: str, inference: str = "amortized") -> Family:
    """The :class:`Family` of ``--model name`` (trained by ``--inference inference``);
    RunDirError naming the choices otherwise."""
    if inference != "amortized":
        try:
            return INFERENCE[(name, inference)]
        except KeyError:
            known = ", ".join(f"--model {m} --inference {i}" for m, i in INFERENCE)
            raise RunDirError(f"unknown model {name!r} with inference {inference!r}; this "
                              f"tfvae knows {known}") from None
    try:
        return FAMILIES[name]
    except KeyError:
        raise RunDirError(
            f"unknown model {name!r}; this tfvae knows {', '.join(FAMILIES)}"
        ) from None


def family_for(config) -> Family:
    """The :class:`Family` of a :class:`tfvae.Config` (its model and inference)."""
    return family(config.model, config.inference)


def family_of(model) -> Family:
    """The :class:`Family` of a model instance (by its ``model_type`` and ``inference``)."""
    return family(model.model_type, getattr(model, "inference", "amortized"))
