"""Mixed precision, as a Keras user turns it on: one global policy, then the usual calls.

``tfvae.keras.mixed_precision.set_global_policy("mixed_float16")`` (or
``"mixed_bfloat16"``) before building a model: the networks compute in half
precision, variables stay float32, the distribution heads, log-probabilities,
KL terms and estimator signals are float32, and under float16 the loss is
scaled (Keras' mixed-precision guide). Every test puts the policy back.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfvae
from tfvae import export

POLICIES = ("mixed_float16", "mixed_bfloat16")
#: family -> constructor arguments of a tiny model, and the data it reads.
FAMILIES = {
    "gaussian": ("gaussian", {}, "bits"),
    "bernoulli": ("bernoulli", {"learn_prior": True}, "bits"),
    "sbn": ("sbn", {"hidden": ()}, "bits"),
    "ae-gmm": ("ae-gmm", {"components": 2}, "bits"),
    "gaussian-likelihood": ("gaussian", {"likelihood": "gaussian", "min_scale": 0.01}, "pixels"),
    "logistic-likelihood": ("gaussian", {"likelihood": "logistic"}, "pixels"),
}


@pytest.fixture(params=POLICIES)
def policy(request):
    """Sets a mixed global policy for the test and puts float32 back after it."""
    from tfvae._keras import keras

    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def pixels():
    """64 MNIST digits from the embedded data as intensities in [0, 1], [64, 784]."""
    from tfvae import data

    ds = data.load_dataset("mnist-10k")
    return (ds.x_train[:64].reshape(-1, 784) / 255.0).astype(np.float32)


def _data(kind, binary_images, pixels):
    return binary_images[:64] if kind == "bits" else pixels


def _compute_dtype(policy):
    return "float16" if policy == "mixed_float16" else "bfloat16"


def assert_float32_variables(model):
    assert {v.dtype.name for v in model.variables} == {"float32"}


def test_parts_compute_in_half_precision_and_score_in_float32(make_model, binary_images,
                                                             policy):
    model = make_model("bernoulli", learn_prior=True)
    dense = model.decoder.layers[0]
    assert dense.compute_dtype == _compute_dtype(policy) and dense.variable_dtype == "float32"
    for head in (model.encoder.layers[-1], model.decoder.layers[-1]):
        assert head.compute_dtype == "float32"
    assert_float32_variables(model)
    terms = model.elbo_terms(binary_images[:4])
    assert terms["reconstruction"].dtype.name == "float32" and terms["kl"].dtype.name == "float32"
    est, kl = model.estimate(binary_images[:4])
    assert est.loss.dtype.name == "float32" and est.signal.dtype.name == "float32"
    assert kl.dtype.name == "float32"


def test_gaussian_vae_fits_evaluates_and_samples(make_model, binary_images, policy):
    from tfvae._keras import keras

    model = make_model("gaussian")
    model.compile(jit_compile=False)  # the slow tests below take compile's defaults
    if policy == "mixed_float16":  # compile wraps the optimizer, as Keras does
        assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    history = model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    result = model.evaluate(binary_images[:64], verbose=0, return_dict=True)
    assert np.isfinite(result["elbo"])
    assert np.isfinite(tfvae.evaluate(model, binary_images[:64], k=4)["log_likelihood"])
    images = model.sample(3, seed=0)
    assert images.dtype == np.float32 and images.shape == (3, 784)
    assert_float32_variables(model)


def test_float16_scales_the_loss(make_model, binary_images):
    """Loss scaling as in Keras' guide: an overflowing scale skips the step and shrinks;
    a sane one gives the float32 step (the gradients are unscaled)."""
    from tfvae._keras import keras

    x = binary_images[:32]
    reference = make_model("gaussian")  # float32
    reference.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    start = reference.decoder.layers[-2].bias.numpy()
    reference.train_on_batch(x)
    expected = reference.decoder.layers[-2].bias.numpy() - start
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        overflowing = make_model("gaussian")
        huge = 2.0 ** 40  # float16 gradients overflow at this scale
        overflowing.compile(optimizer=keras.mixed_precision.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=huge), jit_compile=False)
        before = [v.numpy() for v in overflowing.trainable_variables]
        overflowing.train_on_batch(x)
        assert float(overflowing.optimizer.loss_scale) < huge
        after = [v.numpy() for v in overflowing.trainable_variables]
        assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))

        model = make_model("gaussian")
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
        model.train_on_batch(x)
        moved = model.decoder.layers[-2].bias.numpy() - start
        np.testing.assert_allclose(moved, expected, atol=0.02 * np.abs(expected).max())
    finally:
        keras.mixed_precision.set_global_policy("float32")


def run_family(make_model, name, binary_images, pixels, tmp_path, exports=True):
    """What a user does with a model: fit, evaluate, sample, export; returns the model."""
    family, kwargs, kind = FAMILIES[name]
    x = _data(kind, binary_images, pixels)
    model = make_model(family, **kwargs)
    model.compile()
    history = model.fit(x, epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    if family == "ae-gmm":
        model.post_fit(x, seed=0)
    assert np.isfinite(model.evaluate(x, verbose=0, return_dict=True)["loss"])
    result = tfvae.evaluate(model, x, k=4)
    assert np.isfinite(result["elbo"]) and np.isfinite(result["log_likelihood"])
    images = model.sample(3, seed=0)
    assert images.dtype == np.float32 and np.isfinite(images).all()
    if not exports:
        assert_float32_variables(model)
        return model
    manifest = export.export(model, tmp_path / "export", precisions="float32")
    for signature in manifest["signatures"].values():
        for entry in {**signature["inputs"], **signature["outputs"]}.values():
            assert entry["dtype"] == "float32"
    noise = model.draw_noise(3, seed=0)
    exported = export.ExportDir(tmp_path / "export")
    np.testing.assert_allclose(exported.run("sample", noise, precision="float32")["image"],
                               images, atol=0.05)
    assert_float32_variables(model)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_fits_evaluates_samples_exports(make_model, binary_images, pixels, tmp_path,
                                                     policy, name):
    # An export copies the layers in float32 whatever the policy (tfvae/export/graph.py):
    # float16's exports stand for bfloat16's but one, which checks that mechanism under it.
    run_family(make_model, name, binary_images, pixels, tmp_path,
               exports=policy == "mixed_float16" or name == "gaussian")


@pytest.fixture
def float16_policy():
    """``mixed_float16`` (the policy with loss scaling) for the test, float32 after it."""
    from tfvae._keras import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    yield "mixed_float16"
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["reinforce", "ema", "nvil", "rloo", "disarm", "vimco",
                                       "arm", "gumbel", "straight-through", "relax"])
@pytest.mark.parametrize("family", ["bernoulli", "sbn"])
def test_every_estimator_trains(make_model, binary_images, float16_policy, family, estimator):
    # One policy for the sweep: float16's loss scaling is the harder case; bfloat16 trains
    # every family in test_every_family_fits_evaluates_samples_exports.
    model = make_model(family, estimator=estimator, **({"hidden": ()} if family == "sbn" else {}))
    model.compile(jit_compile=False)
    history = model.fit(binary_images[:64], epochs=1, batch_size=32, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["signal_std"]).all()
    # Steps whose float16 gradients overflow are skipped, not applied (relax's control too).
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    assert_float32_variables(model)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gaussian", "bernoulli", "sbn"])
def test_fused_blocks_train(make_model, binary_images, policy, family):
    model = make_model(family)
    model.compile(steps_per_execution=1, jit_compile=False)
    blocks = tfvae.data.blocks((binary_images[:96] > 0.5).astype(np.uint8), 32, seed=0)
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(blocks.dataset, epochs=1, steps_per_epoch=blocks.steps_per_epoch,
                        verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = [v.numpy() for v in model.trainable_variables]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert_float32_variables(model)


@pytest.mark.slow
def test_train_and_export_run(tmp_path, policy):
    run = tfvae.train(out=tmp_path / "run", epochs=1, hidden=(32,), latent_dim=2, iwae_k=4,
                      verbose=0, figures=False)
    assert np.isfinite(run.evaluation["elbo"])
    assert_float32_variables(run.model)
    manifest = export.export_run(tmp_path / "run", tmp_path / "export", precisions="float32")
    assert manifest["signatures"]["sample"]["outputs"]["image"]["dtype"] == "float32"
