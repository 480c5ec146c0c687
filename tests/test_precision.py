"""``--precision`` / ``precision=``: a run's networks compute in float32, bfloat16 or float16.

The precision is part of the run's configuration: a new run without one takes
Keras' global policy, records what it was, and the run's model is built under
that precision whenever it is trained, resumed or loaded, whatever the global
policy is then; the global policy is put back after every build.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SMALL, SMALL_RUN

import tfvae
from tfvae.config import Config
from tfvae.errors import ConfigError
from tfvae.runs import families, store


@pytest.fixture
def global_policy():
    """``global_policy(name)`` sets Keras' global policy; float32 is put back after the test."""
    from tfvae._keras import keras

    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _policy():
    from tfvae._keras import keras

    return keras.mixed_precision.global_policy().name


def test_global_precision_names_the_policy_and_refuses_others(global_policy):
    for policy, precision in (("float32", "float32"), ("mixed_bfloat16", "bfloat16"),
                              ("mixed_float16", "float16")):
        global_policy(policy)
        assert families.global_precision() == precision
    global_policy("float64")
    with pytest.raises(ConfigError, match="global policy is 'float64'.*mixed_bfloat16.*"
                                          r"pass precision= \(float32, bfloat16, float16\)"):
        families.global_precision()


@pytest.mark.parametrize("precision, policy, compute", [
    ("bfloat16", "mixed_bfloat16", "bfloat16"), ("float16", "mixed_float16", "float16"),
    ("float32", "float32", "float32"), (None, "mixed_bfloat16", "bfloat16")])
def test_a_model_is_built_in_its_configs_precision(global_policy, precision, policy, compute):
    global_policy("mixed_bfloat16" if precision is None else "float32")
    before = _policy()
    config = Config(precision=precision, input_dim=784, image_shape=(28, 28, 1),
                    likelihood="bernoulli", **SMALL)
    model = store.build_model(config)
    assert model.dtype_policy.name == policy
    out = model(np.zeros((2, 784), np.float32))
    assert out.dtype == np.float32  # the distributions are float32 whatever the networks do
    assert {w.dtype.name for w in model.weights} == {"float32"}
    dense = [layer for layer in model.encoder.submodules
             if isinstance(layer, tfvae.keras.layers.Dense)]
    assert dense and dense[0].compute_dtype == compute
    assert _policy() == before  # a build leaves the global policy as it found it


def test_precision_is_checked_where_it_enters():
    with pytest.raises(ConfigError, match="unknown precision 'half'; choose one of: float32, "
                                          "bfloat16, float16"):
        Config(precision="half")
    with pytest.raises(ConfigError, match="mean-field fits .* in float32: leave out "
                                          "--precision bfloat16"):
        Config(model="sbn", hidden=(), inference="mean-field", precision="bfloat16")
    from tfvae_cli.main import cli

    result = CliRunner().invoke(cli, ["train", "--precision", "half"])
    assert result.exit_code == 2 and "'half' is not one of 'float32', 'bfloat16', 'float16'" \
        in result.output


@pytest.mark.slow
def test_a_run_trains_resumes_and_loads_in_its_precision(tmp_path, digits_npz, global_policy):
    from tfvae_cli.main import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--precision", "float16", "--data-dir", str(digits_npz), "--epochs", "1",
        "--hidden", "32", "--latent-dim", "2", "--iwae-k", "5", "--out",
        str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["precision"] == "float16"
    # Resumed and loaded under another global policy, the run keeps its own.
    global_policy("mixed_bfloat16")
    run = tfvae.train(resume=out, epochs=2, verbose=0, figures=False)
    assert run.model.dtype_policy.name == "mixed_float16"
    assert isinstance(run.model.optimizer, tfvae.keras.mixed_precision.LossScaleOptimizer)
    assert len(run.history) == 2 and np.isfinite(run.evaluation["elbo"])
    assert tfvae.load_run(out).model.dtype_policy.name == "mixed_float16"
    assert _policy() == "mixed_bfloat16"
    # A new run without a precision records the global policy's.
    other = tfvae.train(out=tmp_path / "other", epochs=1, **SMALL_RUN)
    assert other.config.precision == "bfloat16"
    assert tfvae.load_run(tmp_path / "other").config.precision == "bfloat16"
