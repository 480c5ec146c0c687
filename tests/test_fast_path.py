"""The fast training path: packed bits, block pipelines, fused steps, fused log-prob."""

import numpy as np
import pytest

import tfvae
from tfvae import data, objectives
from tfvae._keras import keras, tf, tfd, tfpl
from tfvae.data import modes
from tfvae.fused_blocks import noisy_bits


def _id_bits(n: int, width: int = 37) -> np.ndarray:
    """Rows whose first 16 bits spell the row number (width not a multiple of 8)."""
    ids = np.arange(n)
    bits = (ids[:, None] >> np.arange(16)[None, :]) & 1
    rest = np.random.default_rng(0).integers(0, 2, (n, width - 16))
    return np.concatenate([bits, rest], axis=1).astype(np.uint8)


def _row_ids(bits: np.ndarray) -> np.ndarray:
    return (bits[:, :16].astype(np.int64) << np.arange(16)).sum(axis=1)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_pack_and_unpack_bits_round_trip(dtype):
    x = _id_bits(300).astype(dtype)
    packed = data.pack_bits(x, chunk_rows=7)
    assert packed.shape == (300, 5) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, np.packbits(x.astype(bool), axis=1))
    np.testing.assert_array_equal(data.unpack_bits(tf.constant(packed), 37).numpy(), x)


def test_is_binary():
    assert data.is_binary(np.array([[0.0, 1.0], [1.0, 1.0]]))
    assert not data.is_binary(np.array([[0.0, 0.5]]))
    assert not data.is_binary(np.array([[2]], np.uint8))


def _epoch_rows(pipeline, epochs: int = 1):
    """Row ids each block holds (real rows only), per epoch, from a bits pipeline."""
    it = iter(pipeline.dataset)
    out = []
    for _ in range(epochs):
        rows = []
        for _ in range(pipeline.steps_per_epoch):
            element = next(it)
            flat = tf.reshape(element["bits"], [-1, element["bits"].shape[-1]])
            real = flat[: int(element["rows"])]
            rows.append(_row_ids(data.unpack_bits(real, 37).numpy()))
        out.append(np.concatenate(rows))
    return out


def test_block_pipeline_epochs_are_permutations_of_every_row():
    n, batch = 1000, 32  # 32 batches per epoch, the last one of 8 rows
    p = data.blocks(_id_bits(n), batch, seed=3, mode="static", levels=2, block_steps=10)
    assert (p.steps_per_epoch, p.batches_per_epoch, p.block_steps) == (4, 32, 10)
    first, second = _epoch_rows(p, epochs=2)
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
    assert not np.array_equal(first, second)  # reshuffled every epoch
    again = data.blocks(_id_bits(n), batch, seed=3, mode="static", levels=2, block_steps=10)
    np.testing.assert_array_equal(_epoch_rows(again)[0], first)  # same seed, same epochs
    ordered = data.blocks(_id_bits(n), batch, seed=3, mode="static", levels=2,
                          block_steps=10, shuffle=False)
    np.testing.assert_array_equal(_epoch_rows(ordered)[0], np.arange(n))


def test_block_pipeline_runs_without_tf_data_autotuning():
    """Its buffers are fixed; deleting an iterator with autotuning on waits for the
    tuning thread (at the end of fit, for seconds)."""
    for mode in ("static", "dynamic"):
        p = data.blocks(_id_bits(100), 10, seed=0, mode=mode, levels=2)
        assert p.dataset.options().autotune.enabled is False


def test_block_pipeline_applies_the_mode_to_float_blocks():
    x = np.random.default_rng(0).integers(0, 256, (50, 6)).astype(np.uint8)
    p = data.blocks(x, 10, seed=0, mode="none", levels=256, shuffle=False)
    element = next(iter(p.dataset))
    assert p.steps_per_epoch == 1 and int(element["rows"]) == 50
    np.testing.assert_allclose(element["block"].numpy().reshape(50, 6), x / 255.0, rtol=1e-6)
    # Dynamic bits: the block carries the rows and their noise; the model draws.
    dyn = next(iter(data.blocks(x, 10, seed=0, mode="dynamic", levels=256,
                                shuffle=False).dataset))
    assert dyn["noise"].dtype == tf.uint16 and float(dyn["peak"]) == 255.0
    np.testing.assert_array_equal(dyn["levels"].numpy().reshape(50, 6), x)
    bits = noisy_bits(dyn["levels"], dyn["noise"], dyn["peak"]).numpy()
    assert set(np.unique(bits)) == {0.0, 1.0}
    # 8-bit rows are 256 levels unless told, whatever the mode (dynamic bits
    # once took the raw 0-255 values as probabilities: all ones).
    grey = np.full((400, 50), 64, np.uint8)
    block = next(iter(data.blocks(grey, 100, seed=0, mode="dynamic").dataset))
    assert float(block["peak"]) == 255.0
    bits = noisy_bits(block["levels"], block["noise"], block["peak"]).numpy()
    assert abs(bits.mean() - 64 / 255) < 0.01


@pytest.mark.parametrize("compiled", [False, True])
def test_noisy_bits_take_each_level_with_its_probability(compiled):
    """Every 16-bit noise value against every 8-bit level: each level k is 1 for
    exactly ceil(2^16 k / 255) of the 2^16 values, within 2^-16 of k / 255 (0 and 1
    exactly), in eager TensorFlow and compiled by XLA as in a training block."""
    levels = tf.constant(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 2 ** 16, 1))
    noise = tf.constant(np.tile(np.arange(2 ** 16, dtype=np.uint16), (256, 1)))

    def draw():
        return noisy_bits(levels, noise, tf.constant(255.0))

    bits = (tf.function(draw, jit_compile=True) if compiled else draw)().numpy()
    ones = bits.sum(axis=1)
    np.testing.assert_array_equal(ones, np.ceil(2 ** 16 * np.arange(256) / 255))
    assert ones[0] == 0 and ones[255] == 2 ** 16
    assert np.abs(ones / 2 ** 16 - np.arange(256) / 255).max() < 2 ** -16


def test_dynamic_noise_is_uniform_and_seeded():
    rows = tf.zeros([2000, 7], tf.uint8)  # an odd width: one word's half unused
    noise = modes.dynamic_noise(rows, tf.constant(5, tf.int64)).numpy()
    assert noise.shape == (2000, 7) and noise.dtype == np.uint16
    np.testing.assert_array_equal(modes.dynamic_noise(rows, tf.constant(5, tf.int64)), noise)
    assert not np.array_equal(modes.dynamic_noise(rows, tf.constant(6, tf.int64)), noise)
    # 14,000 draws: mean (2^16 - 1) / 2 within 5 standard errors; both bytes vary.
    assert abs(noise.mean() - 32767.5) < 5 * 18918 / np.sqrt(noise.size)
    assert len(np.unique(noise & 0xFF)) == 256 and len(np.unique(noise >> 8)) == 256
    # The per-batch pipeline draws its bits from the same noise.
    batch = modes.MODES["dynamic"].batch(tf.fill([2000, 7], np.uint8(128)),
                                         tf.constant(5, tf.int64), 256)
    np.testing.assert_array_equal(batch.numpy(), (noise / 2 ** 16 < 128 / 255).astype(np.float32))


def test_block_pipeline_rejects_bad_input():
    with pytest.raises(data.ConfigError, match="larger than the 5 training examples"):
        data.blocks(np.zeros((5, 4), np.uint8), 8, seed=0)
    with pytest.raises(data.ConfigError, match="unknown pipeline mode"):
        data.blocks(np.zeros((5, 4), np.uint8), 2, seed=0, mode="bogus")
    # Without a mode: binary rows are held bit-packed, others as given.
    assert "bits" in next(iter(data.blocks(np.eye(6, 8, dtype=np.float32), 2).dataset))
    assert "block" in next(iter(data.blocks(np.full((6, 8), 0.5, np.float32), 2).dataset))


@pytest.fixture
def build(make_model):
    def _build(family, optimizer):
        model = make_model(family, hidden=(16,))
        model.compile(optimizer=optimizer)
        model.reseed(5)
        return model

    return _build


def _block_of(x, steps, batch):
    block = np.zeros((steps * batch, (x.shape[1] + 7) // 8), np.uint8)
    block[: len(x)] = data.pack_bits(x)
    return {"bits": tf.constant(block.reshape(steps, batch, -1)), "rows": tf.constant(len(x))}


X70 = (np.random.default_rng(1).random((70, 784)) < 0.3).astype(np.uint8)  # 3 x 20 + 10


def test_a_fused_block_makes_the_same_updates_as_single_steps(build):
    """Blocks (XLA loop + a partial tail batch) == one train_step per batch.

    The autoencoder draws no noise, so the two paths must agree to rounding
    (plain SGD: Adam's normalisation would magnify the rounding of sums that
    XLA orders differently in parameters with tiny gradients).
    """
    single = build("ae-gmm", keras.optimizers.SGD(1e-3))
    fused = build("ae-gmm", keras.optimizers.SGD(1e-3))
    before = [w.numpy() for w in single.trainable_weights]
    fused.set_weights(single.get_weights())
    for start in range(0, 70, 20):
        single.train_step(tf.constant(X70[start:start + 20], tf.float32))
    logs = fused.train_step(_block_of(X70, 4, 20))
    assert int(fused.optimizer.iterations.numpy()) == 4
    moved = 0.0
    for a, b, start in zip(single.trainable_weights, fused.trainable_weights, before,
                           strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
        moved = max(moved, float(np.abs(a.numpy() - start).max()))
    assert moved > 1e-3  # the steps did change the weights
    for name, tracker in single._trackers.items():  # the same means over the 4 steps
        np.testing.assert_allclose(float(logs[name]), float(tracker.result()), rtol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("model_type", ["gaussian", "bernoulli"])
def test_fused_blocks_of_vaes_train_reproducibly(model_type, build):
    """VAEs draw noise: XLA's stateless random numbers are not the TF kernels',
    so the paths differ by the noise only; a fused run repeats for its seed."""
    runs = []
    model = build(model_type, keras.optimizers.Adam(1e-3))
    init = model.get_weights()
    for _ in range(2):
        # The same start each time (weights, optimizer state, means, noise); the second
        # run reuses the first one's compiled loop.
        model.set_weights(init)
        for variable in model.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        model.reset_metrics()
        model.reseed(5)
        logs = model.train_step(_block_of(X70, 4, 20))
        runs.append(({k: float(v) for k, v in logs.items()},
                     [w.numpy() for w in model.trainable_weights]))
        assert int(model.optimizer.iterations.numpy()) == 4
    (logs_a, w_a), (logs_b, w_b) = runs
    # (Up to the rounding of multi-threaded sums, which TensorFlow does not fix
    # without enable_op_determinism.)
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for name in logs_a:
        np.testing.assert_allclose(logs_a[name], logs_b[name], rtol=1e-3, err_msg=name)
    single = build(model_type, keras.optimizers.Adam(1e-3))
    single.set_weights(init)
    for start in range(0, 70, 20):
        single.train_step(tf.constant(X70[start:start + 20], tf.float32))
    # Same data, same model: the mean loss agrees to within the noise.
    np.testing.assert_allclose(float(logs_a["loss"]), float(single._trackers["loss"].result()),
                               rtol=0.02)


def test_compile_block_compiles_the_loop_fit_uses_and_trains_nothing(make_model):
    """tfvae.train compiles the fused loop before fit (to return XLA's scratch first).

    The Bernoulli VAE: its loop also updates the estimator's baseline."""
    blocks = data.blocks(X70, 20, seed=0)
    runs = []
    for ahead in (True, False):
        model = make_model("bernoulli", hidden=(16,))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=1,
                      jit_compile=False)
        model.reseed(5)
        traced, step = [], model._step

        def counted(x, step=step, traced=traced):
            traced.append(x.shape)  # runs once per trace of the step
            return step(x)

        model._step = counted
        if ahead:
            before = [w.numpy() for w in model.weights]
            assert model.compile_block(blocks.dataset.element_spec) is True
            assert model._run_block.experimental_get_tracing_count() == 1  # traced (and run)
            assert int(model.optimizer.iterations.numpy()) == 0  # zero batches ran
            for a, b in zip(before, model.weights, strict=True):
                np.testing.assert_array_equal(a, b.numpy())
        history = model.fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, epochs=1,
                            verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 4  # 3 x 20 + a partial 10
        assert model._run_block.experimental_get_tracing_count() == 1  # fit reused the trace
        # The loop and the partial batch (outside XLA) share one trace of the step.
        assert [shape.as_list() for shape in traced] == [[None, 784]]
        runs.append((history.history["loss"][0], [w.numpy() for w in model.trainable_weights]))
    (loss_a, w_a), (loss_b, w_b) = runs
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(w_a, w_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_compile_block_explains_what_it_takes(make_model):
    model = make_model("gaussian", hidden=(16,))
    model.compile(optimizer="adam", steps_per_execution=1, jit_compile=False)
    with pytest.raises(data.ConfigError, match="element_spec of tfvae.data.blocks"):
        model.compile_block(tf.TensorSpec([None, 784], tf.float32))
    # Rows of another width (a 784-input model): refused, not reshaped into other batches.
    half = np.random.default_rng(0).random((70, 392)).astype(np.float32)
    with pytest.raises(data.ConfigError, match="rows of 392 values, but the model takes 784"):
        model.compile_block(data.blocks(half, 20, seed=0).dataset.element_spec)
    with pytest.raises(data.ConfigError, match="rows of 49 bytes of packed bits, but .* 784 "
                                               r"inputs \(98 bytes"):
        model.compile_block(data.blocks(half > 0.5, 20, seed=0).dataset.element_spec)
    model.compile(optimizer="adam")  # XLA over Keras' whole function: nothing to do ahead
    assert model.compile_block(data.blocks(X70, 20, seed=0).dataset.element_spec) is False


def test_fit_means_what_keras_means_and_blocks_are_opt_in():
    """fit(array) is Keras' own loop; data.blocks(...) passed to fit is the fused path."""
    x = (np.random.default_rng(0).random((300, 784)) < 0.3).astype(np.float32)
    model = tfvae.GaussianVAE(latent_dim=4, hidden=[32])
    # Without XLA (one compilation less): the loop's semantics are Keras' either way.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=1,
                  jit_compile=False)
    seen = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    history = model.fit(x, epochs=2, batch_size=64, verbose=0, callbacks=[Count()],
                        validation_data=(x[:50],))
    assert int(model.optimizer.iterations.numpy()) == 2 * 5  # ceil(300 / 64) per epoch
    assert seen == [0, 1, 2, 3, 4] * 2  # batch hooks count batches
    assert "val_elbo" in history.history
    # The fused path on request: one Keras step (and batch hook) per block.
    blocks = tfvae.data.blocks(x, batch_size=64, seed=0)
    seen.clear()
    history = model.fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, epochs=2,
                        verbose=0, callbacks=[Count()])
    assert int(model.optimizer.iterations.numpy()) == 10 + 2 * 5
    assert seen == [0, 0]
    assert history.history["loss"][1] < history.history["loss"][0]


# Each case compiles its own XLA program: the quick suite keeps a multi-sample bound
# (several draws) and the layered estimators; the other single-layer ones are slow.
@pytest.mark.parametrize("model", [
    pytest.param(dict(estimator="rloo", num_samples=2), marks=pytest.mark.slow),
    pytest.param(dict(estimator="disarm"), marks=pytest.mark.slow),
    dict(estimator="vimco", num_samples=3),
    dict(estimator="disarm", stochastic_layers=2, decoder_hidden=(8,)),
], ids=["rloo", "disarm", "vimco", "sbn-disarm"])
def test_blocks_with_a_partial_batch_train_every_estimator_under_compile_defaults(model):
    """Multi-sample estimators on blocks with ``compile``'s defaults (XLA on).

    The partial last batch has a run-time size inside the compiled function;
    the Bernoulli terms of several draws once took gradients there that XLA
    refused (shape arguments that were not compile-time constants).
    """
    x = (np.random.default_rng(0).random((150, 784)) < 0.3).astype(np.float32)
    cls = tfvae.StackedBernoulliVAE if "stochastic_layers" in model else tfvae.BernoulliVAE
    vae = cls(latent_dim=4, hidden=(8,), **model)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert vae.jit_compile
    blocks = tfvae.data.blocks(x, batch_size=64, seed=0)  # 2 x 64 + 22
    before = [w.numpy() for w in vae.trainable_weights]
    history = vae.fit(blocks.dataset, steps_per_epoch=blocks.steps_per_epoch, epochs=1,
                      verbose=0)
    assert int(vae.optimizer.iterations.numpy()) == 3
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, vae.trainable_weights,
                                                                 strict=True))


def test_submodules_are_attributes_of_the_package():
    """``import tfvae`` then ``tfvae.data.blocks(...)``, as the README writes it."""
    import importlib

    for name in ("data", "callbacks", "export", "evaluation", "estimators"):
        assert tfvae.__getattr__(name) is importlib.import_module(f"tfvae.{name}")
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        tfvae.__getattr__("bogus")


def test_compile_defaults_follow_the_architecture_and_are_overridable():
    from tfvae.models.steps import JIT_COMPILE, STEPS_PER_EXECUTION

    mlp = tfvae.GaussianVAE(latent_dim=2, hidden=[8])
    mlp.compile(optimizer="adam")
    assert int(mlp._steps_per_execution.numpy()) == STEPS_PER_EXECUTION
    assert mlp.jit_compile is JIT_COMPILE["mlp"]
    conv = tfvae.GaussianVAE(latent_dim=2, hidden=[8], arch="conv")
    conv.compile(optimizer="adam")
    assert conv.jit_compile is JIT_COMPILE["conv"]
    mlp.compile(optimizer="adam", steps_per_execution=1, jit_compile=False)
    assert int(mlp._steps_per_execution.numpy()) == 1 and mlp.jit_compile is False
    mlp.compile(optimizer="adam", run_eagerly=True)
    assert mlp.run_eagerly and not mlp.jit_compile


def test_on_batch_methods_work_with_several_steps_per_execution(binary_images):
    model = tfvae.GaussianVAE(latent_dim=2, hidden=[8])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))  # 32 steps per execution
    logs = model.train_on_batch(binary_images[:64], return_dict=True)
    assert int(model.optimizer.iterations.numpy()) == 1 and np.isfinite(logs["loss"])
    assert np.isfinite(model.test_on_batch(binary_images[:64], return_dict=True)["loss"])
    assert model.predict_on_batch(binary_images[:5]).shape == (5, 784)
    assert int(model._steps_per_execution.numpy()) == 32  # restored afterwards


@pytest.mark.parametrize("binary", [True, False])
def test_fused_bernoulli_log_prob_matches_tfp(binary):
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(0, 6, (16, 50)).astype(np.float32))
    x = rng.random((16, 50)).astype(np.float32)
    x = tf.constant((x < 0.4).astype(np.float32) if binary else x)
    weights = tf.range(16, dtype=tf.float32)
    layer_output = keras.Sequential(
        [keras.layers.InputLayer(input_shape=(50,)), tfpl.IndependentBernoulli(50)]
    )(logits)  # a tfp.layers distribution, wrapped to act as a tensor
    reference = tfd.Independent(tfd.Bernoulli(logits=logits), 1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = objectives.log_likelihood(tfd.Independent(tfd.Bernoulli(logits=logits), 1), x)
        theirs = reference.log_prob(x)
        ours_sum, theirs_sum = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours_sum, logits), tape.gradient(theirs_sum, logits),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(objectives.log_likelihood(layer_output, x), theirs, rtol=1e-5)


@pytest.mark.parametrize("compiled", [False, True])
def test_log1p_unit_is_as_accurate_as_log1p(compiled):
    # Goldberg's one-log formula: a few ulps everywhere in [0, 1], the values
    # that round 1 + e to 1 included (a plain log(1 + e) returns 0 there).
    e = np.concatenate([[0.0], np.logspace(-37, 0, 4001)]).astype(np.float32)
    fn = tf.function(objectives.log1p_unit, jit_compile=True) if compiled else \
        objectives.log1p_unit
    ours = fn(tf.constant(e)).numpy()
    np.testing.assert_allclose(ours, np.log1p(e.astype(np.float64)), rtol=5e-7, atol=0)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("width", [784, 16, 9, 1])
def test_sum_log1p_unit_is_within_its_bound_of_the_exact_sum(compiled, width):
    # One log per 16 factors 1 + e: within ~1e-7 nats per value of what the
    # term-by-term float32 sum gives (against the float64 sum), for every e in
    # [0, 1], widths that need padding included: what IWAE's draws may lose.
    rng = np.random.default_rng(width)
    e = np.exp(-rng.exponential(6.0, (3, 50, width))).astype(np.float32)  # (0, 1]
    e[0, 0] = 0.0
    e[0, 1] = 1.0
    e[1, :, : width // 2] = 1e-30
    fn = tf.function(objectives.sum_log1p_unit, jit_compile=True) if compiled else \
        objectives.sum_log1p_unit
    ours = fn(tf.constant(e)).numpy()
    exact = np.log1p(e.astype(np.float64)).sum(axis=-1)
    termwise = tf.function(lambda v: tf.reduce_sum(objectives.log1p_unit(v), axis=-1),
                           jit_compile=compiled)(tf.constant(e)).numpy()
    assert ours.shape == exact.shape
    error, termwise_error = np.abs(ours - exact), np.abs(termwise - exact)
    assert np.all(error <= termwise_error + 1.2e-7 * width), (error - termwise_error).max()
    assert np.all(error <= 1e-6 * exact + 1.2e-7 * width), error.max()
    unknown = tf.function(objectives.sum_log1p_unit,
                          input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    np.testing.assert_allclose(unknown(tf.constant(e)), exact, rtol=1e-6, atol=1e-7 * width)


def test_bernoulli_terms_keep_their_relative_accuracy_for_confident_logits():
    # x * l - softplus(l) for binary x is 0 or -|l|, minus log1p(exp(-|l|)): tiny
    # when the pixel agrees with a confident logit (exp(-80) = 1.8e-35, a normal
    # float), and still accurate to a few ulps there.
    logits = np.concatenate([np.linspace(-80, 80, 3201), [-17.0, 17.0, 0.0]]).astype(np.float32)
    for x in (np.zeros_like(logits), np.ones_like(logits)):
        ours = objectives.bernoulli_log_prob(tf.constant(logits), tf.constant(x)).numpy()
        l64 = logits.astype(np.float64)
        exact = (x * l64 - np.maximum(l64, 0)) - np.log1p(np.exp(-np.abs(l64)))
        np.testing.assert_allclose(ours, exact, rtol=2e-6, atol=0)


def test_evaluate_takes_uint8_bits_like_floats(binary_images):
    model = tfvae.GaussianVAE(latent_dim=3, hidden=[16])
    bits = binary_images[:40].astype(np.uint8)
    a = tfvae.evaluate(model, bits, k=5, seed=1)
    b = tfvae.evaluate(model, bits.astype(np.float32), k=5, seed=1)
    assert a == b


def test_closed_form_kl_matches_tfp():
    rng = np.random.default_rng(2)
    loc = tf.constant(rng.normal(size=(5, 7)).astype(np.float32))
    scale = tf.constant(rng.uniform(0.05, 3.0, (5, 7)).astype(np.float32))
    q = tfd.Independent(tfd.Normal(loc, scale), 1)
    prior = tfd.Independent(tfd.Normal(tf.zeros([7]), 1.0), 1)
    np.testing.assert_allclose(objectives.kl_to_standard_normal(q),
                               tfd.kl_divergence(q, prior), rtol=1e-5)
    model = tfvae.GaussianVAE(latent_dim=7, hidden=[8])
    q = model.encode(tf.constant(rng.random((4, 784)).astype(np.float32)))
    np.testing.assert_allclose(model.rate(q), tfd.kl_divergence(q, model.prior()), rtol=1e-5)


def test_fused_bernoulli_log_prob_broadcasts_samples_over_a_batch():
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(size=(4, 6)).astype(np.float32))
    z = tf.constant((rng.random((3, 4, 6)) < 0.5).astype(np.float32))  # [k, batch, latent]
    q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours, theirs = objectives.log_likelihood(q, z), q.log_prob(z)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours, logits), tape.gradient(theirs, logits),
                               rtol=1e-5)


@pytest.mark.parametrize("bernoulli", [True, False])
def test_log_likelihood_of_draws_matches_tfp_for_every_draw(bernoulli):
    # k draws per example, flattened into the decoder's batch: the compiled
    # Bernoulli kernel (or another distribution's own log_prob) gives the
    # [k, batch] values and gradients TFP gives for x repeated over the draws.
    rng = np.random.default_rng(5)
    k, batch, width = 3, 4, 9
    params = tf.constant(rng.normal(0, 4, (k * batch, width)).astype(np.float32))
    x = tf.constant((rng.random((batch, width)) < 0.5).astype(np.float32))
    x_rep = tf.reshape(tf.broadcast_to(x, [k, batch, width]), [-1, width])
    weights = tf.reshape(tf.range(k * batch, dtype=tf.float32), [k, batch])

    def likelihood(p):
        if bernoulli:
            return tfd.Independent(tfd.Bernoulli(logits=p), 1)
        return tfd.Independent(tfd.Normal(p, 0.5), 1)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        ours = objectives.log_likelihood_of_draws(likelihood(params), x, [k, batch])
        theirs = tf.reshape(likelihood(params).log_prob(x_rep), [k, batch])
        ours_sum, theirs_sum = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
    assert ours.shape == (k, batch)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(ours_sum, params), tape.gradient(theirs_sum, params),
                               rtol=1e-5, atol=1e-5)


def test_closed_form_bernoulli_kl_matches_tfp():
    rng = np.random.default_rng(4)
    logits = tf.constant(rng.normal(0, 3, (5, 6)).astype(np.float32))
    prior = tf.constant(rng.normal(0, 1, (6,)).astype(np.float32))
    theirs = tfd.kl_divergence(tfd.Bernoulli(logits=logits), tfd.Bernoulli(logits=prior))
    np.testing.assert_allclose(objectives.kl_bernoulli(logits, prior), theirs, rtol=1e-5,
                               atol=1e-6)
    model = tfvae.BernoulliVAE(latent_dim=6, hidden=[8], learn_prior=True)
    q = model.encode(tf.constant(rng.random((4, 784)).astype(np.float32)))
    np.testing.assert_allclose(model.rate(q), tfd.kl_divergence(q, model.prior()), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("n", [None, 3])
def test_estimator_samples_are_tfps_draw_for_draw(n):
    from tfvae import estimators

    logits = tf.constant(np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32))
    seed = tf.constant([3, 4], tf.int32)
    q = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 1)
    ours = estimators._sample(logits, seed, n)
    theirs = q.sample(seed=seed) if n is None else q.sample(n, seed=seed)
    np.testing.assert_array_equal(ours, theirs)
