"""Sigmoid belief networks trained by mean-field theory (``--model sbn --inference mean-field``).

The generative model is :class:`tfvae.models.stacked.StackedBernoulliVAE`'s
with linear conditionals (``p(z_L) p(z_(L-1)|z_L) ... p(x|z_1)``, the top
layer's factorised prior fixed or learned) and the same networks, but there
is no encoder: as in Saul, Jaakkola & Jordan (1996), every training example
keeps its own factorised posterior (the logits of its means ``mu``, one per
hidden unit) and the extra parameters ``xi`` of their bound, one per unit
with parents (:mod:`tfvae.models.mean_field_bound`). They are non-trainable
variables of the model, so checkpoints, ``save_weights`` and a resumed run
keep them.

A training step takes a batch with its row indices ``(x, index)``: it
gathers those examples' parameters, refines them with ``mean_field_steps``
updates (each never lowers an example's bound), stores them back, and then
takes one optimizer step on the generative weights with them held, on the
negative bound. ``fit`` on an array passes the row indices itself.

Anything that meets new data (validation, ``evaluate``, :func:`tfvae.evaluate`,
``encode``, reconstructions) fits fresh parameters for it, starting from
means 1/2, with ``mean_field_eval_steps`` updates: the training table is
for training rows only. The reported ``elbo`` is then the mean-field bound,
and the importance-weighted log-likelihood samples the fitted posterior
``prod Bernoulli(mu)`` as its proposal, as the amortised models sample
their encoder's. The rows fitted last are kept with the weights they were
fitted under, so evaluation's importance-weighted pass reuses its bound
pass's fit instead of fitting the same rows again.

Rows are refined in chunks, each one XLA-compiled function; outside XLA
(``compile``'s default here) the chunks of a batch run side by side, one
per core, as do the halves of the weight step.
"""

from __future__ import annotations

import os

import numpy as np

from tfvae import networks
from tfvae._keras import keras, tf, tfd, tfp
from tfvae.errors import ConfigError
from tfvae.estimators import UNIFORM_ALG
from tfvae.estimators.layered import log_bernoulli
from tfvae.fused_blocks import is_block
from tfvae.models import inputs
from tfvae.models import mean_field_bound as mfb
from tfvae.models.base import BASE_METRICS, LatentVariableModel
from tfvae.models.bernoulli import BinaryPrior
from tfvae.models.stacked import StackedBernoulliVAE, _flat
from tfvae.models.steps import TrainingSteps, plain_trace

#: Most rows one compiled refinement takes (a chunk): its loops' slabs of
#: ``[2, rows, children]`` values stay in a core's cache.
CHUNK_ROWS = 16
#: Most parent-child pairs times rows in a chunk: weights past the loops' limit
#: take ``[2, rows, parents, children]`` tensors (:mod:`tfvae.models.mean_field_bound`).
CHUNK_VALUES = 1 << 22


class _Memo:
    """The fitted parameters of the last graph tensor (a plain object: Keras tracks none of it)."""

    key = value = None


class _LastFit:
    """The rows fitted last, what was fitted for them, and the key (weights, steps) it depends on.

    Evaluation asks for a batch's parameters twice: for its bound, then for its
    importance-weighted bound, a chunk of rows at a time. :meth:`lookup` finds
    rows among those fitted last, exactly equal, with the key unchanged; anything
    else is fitted anew. A plain object: Keras tracks none of its variables, so
    no checkpoint holds them.
    """

    def __init__(self, width: int, specs: tuple, key: list):
        def empty(shape):
            return tf.Variable(tf.zeros([0] + list(shape)), shape=[None] + list(shape),
                               trainable=False)

        self.rows = empty([width])
        self.outputs = [empty(spec.shape[1:]) for spec in specs]
        self.key = [tf.Variable(tf.fill(tf.shape(k), float("nan")), trainable=False)
                    for k in key]
        # Rows are found by one weighted sum each (exact in float64 for 0/1 pixels), then
        # compared whole: a collision only fits the rows anew.
        self.weights = tf.constant(np.random.default_rng(0).integers(
            1, (1 << 52) // max(width, 1), width), tf.float64)

    def _keys(self, rows):
        return tf.linalg.matvec(tf.cast(rows, tf.float64), self.weights)  # [n]

    def lookup(self, x, key):
        """``(found, where)``: whether every row of ``x`` is a row fitted last under ``key``,
        and its position there."""
        rows = tf.concat([self.rows, tf.fill([1, x.shape[-1]], float("nan"))], 0)
        keys = self._keys(self.rows)
        order = tf.argsort(keys)
        ends = tf.concat([tf.gather(keys, order), tf.constant([np.inf], tf.float64)], 0)
        where = tf.gather(tf.concat([order, tf.shape(keys)], 0),
                          tf.searchsorted(ends, self._keys(x)))
        found = tf.reduce_all(tf.equal(tf.gather(rows, where), x))
        for held, now in zip(self.key, key, strict=True):
            found &= tf.reduce_all(tf.equal(held, now))
        return found, where

    def store(self, x, outputs, key) -> list:
        """Keeps ``x``, its ``outputs`` and ``key``; returns the assignments."""
        return [v.assign(t) for v, t in zip([self.rows, *self.outputs, *self.key],
                                             [x, *outputs, *key], strict=True)]


def _refuse(model) -> None:
    """ConfigError unless the network is one the closed-form bound covers."""
    if model.likelihood != "bernoulli":
        raise ConfigError(f"mean-field inference needs Bernoulli pixels (binary data), got "
                          f"likelihood {model.likelihood!r}: use --likelihood bernoulli with "
                          "binarized data, or --inference amortized")
    if model.arch != "mlp" or model.hidden or model.decoder_sizes:
        raise ConfigError(
            "mean-field inference needs linear conditionals (its bound is closed form for "
            "them) and has no encoder: use --arch mlp --hidden '' and no --decoder-hidden, "
            "or --inference amortized for networks with hidden layers")


@keras.saving.register_keras_serializable(package="tfvae")
class MeanFieldSBN(BinaryPrior, LatentVariableModel):
    """A linear sigmoid belief network with per-example mean-field posteriors.

    Args:
      train_examples: training examples whose parameters the model keeps;
        ``fit`` takes exactly that many rows (or a dataset of ``(x, index)``
        batches with indices below it).
      stochastic_layers: layers of ``latent_dim`` binary units.
      learn_prior: learn the top layer's prior logits.
      mean_field_steps: updates of a batch's parameters before each weight step.
      mean_field_eval_steps: updates of the parameters fitted to new data.
      **kwargs: see :class:`tfvae.models.base.LatentVariableModel`; ``hidden``
        and the decoder's sizes must be empty (linear), the likelihood
        ``bernoulli``, the architecture ``mlp``.

    Example:
      >>> model = tfvae.MeanFieldSBN(train_examples=len(x_train), latent_dim=200,
      ...                            stochastic_layers=1, hidden=())
      >>> model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
      >>> model.fit(x_train, epochs=5, batch_size=128)  # row i keeps parameters i
      >>> tfvae.evaluate(model, x_test, k=100)["log_likelihood"]
    """

    model_type = "sbn"
    inference = "mean-field"
    metric_names = BASE_METRICS
    _TRAINING_FUNCTIONS = TrainingSteps._TRAINING_FUNCTIONS | {
        "_refine_rows", "_fit_rows", "_refine_chunk", "_fit_chunk"}
    # The top prior and the sampler are the amortised SBN's (same networks).
    noise_inputs = StackedBernoulliVAE.noise_inputs
    sampler_params = StackedBernoulliVAE.sampler_params
    codes_from_noise = staticmethod(StackedBernoulliVAE.codes_from_noise)
    prior_description = staticmethod(StackedBernoulliVAE.prior_description)
    sampler_networks = StackedBernoulliVAE.sampler_networks

    def __init__(self, *args, train_examples: int, stochastic_layers: int = 1,
                 learn_prior: bool = False, mean_field_steps: int = 5,
                 mean_field_eval_steps: int = 50, **kwargs):
        kwargs.setdefault("hidden", ())
        super().__init__(*args, **kwargs)
        _refuse(self)
        for name, value in (("train_examples", train_examples),
                            ("stochastic_layers", stochastic_layers),
                            ("mean_field_steps", mean_field_steps),
                            ("mean_field_eval_steps", mean_field_eval_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.train_examples, self.stochastic_layers = int(train_examples), int(stochastic_layers)
        self.mean_field_steps = int(mean_field_steps)
        self.mean_field_eval_steps = int(mean_field_eval_steps)
        self.learn_prior = bool(learn_prior)
        k = self.latent_dim
        self.decoder = self._build_decoder()
        self.generators = [networks.build_encoder(
            k, (), (k, None), name=f"generator_{i}", center=self.center_input,
            binary_input=True, init=self.init, head_init=self.head_init)
            for i in range(2, self.stochastic_layers + 1)]
        self._make_prior()
        # The per-example parameters: logits of the means, every layer side by side, and
        # xi of every unit with parents (the pixels, then the layers below the top).
        self.lam_sizes = [k] * self.stochastic_layers
        self.xi_sizes = [self.input_dim] + [k] * (self.stochastic_layers - 1)
        self.variational_logits = tf.Variable(
            tf.zeros([self.train_examples, sum(self.lam_sizes)]), trainable=False,
            name="variational_logits")
        self.variational_xi = tf.Variable(
            tf.fill([self.train_examples, sum(self.xi_sizes)], mfb.XI_START), trainable=False,
            name="variational_xi")
        self._memo = _Memo()
        self._last_fit = _LastFit(self.input_dim, self._specs(terms=True), self._fit_key())
        self.built = True

    # ------------------------------------------------------------------ parts
    def network(self) -> mfb.Network:
        """The generative network as :mod:`tfvae.models.mean_field_bound` takes it."""
        signed = self.center_input
        dense = self.decoder.layers[-2]
        layers = [mfb.linear(dense.kernel, dense.bias, signed)]
        for net in self.generators:
            layers.append(mfb.linear(net.layers[-1].kernel, net.layers[-1].bias, signed))
        return mfb.Network(tuple(layers), self.prior_logits())

    @property
    def inference_variables(self) -> list:
        return []  # no encoder: the posteriors are per-example variables

    def init_from_data(self, mean, center: bool = True, output_bias: bool = True,
                       std=None) -> None:
        """As the other models' (the decoder's output bias); there is no encoder input to centre."""
        super().init_from_data(mean, center=False, output_bias=output_bias, std=std)

    def _split(self, lam, xi):
        return tf.split(lam, self.lam_sizes, axis=-1), tf.split(xi, self.xi_sizes, axis=-1)

    def _chunk_rows(self) -> int:
        widest = max(self.latent_dim * width for width in self.xi_sizes)
        return max(1, min(CHUNK_ROWS, CHUNK_VALUES // widest))

    def _by_chunks(self, fn, tensors, specs, steps):
        """``fn(*chunk, steps, network)`` on chunks of the rows of ``tensors``, concatenated.

        Outside XLA the chunks run side by side, one per core (Keras' own
        ``jit_compile=True`` makes the whole step one XLA program, which runs them
        one after another). The weights are read once and passed as tensors: an XLA
        function that reads variables holds them, so its calls could not overlap.
        Memory stays bounded for any number of rows. Every chunk has the model's
        :meth:`_chunk_rows` rows (the last padded): batches of any size, a partial
        last one or a figure's few rows, reuse one compiled program.
        """
        net = self.network()
        n = tf.shape(tensors[0])[0]
        rows = self._chunk_rows()
        chunks = tf.maximum((n + rows - 1) // rows, 1)
        steps = tf.convert_to_tensor(steps, tf.int32)

        def shaped(t):
            t = tf.pad(t, [[0, chunks * rows - n], [0, 0]])
            return tf.reshape(t, tf.stack([chunks, rows, t.shape[-1]]))

        out = tf.map_fn(lambda chunk: fn(*chunk, steps, net), tuple(shaped(t) for t in tensors),
                        fn_output_signature=specs, parallel_iterations=os.cpu_count() or 1)
        return tuple(tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))[:n] for t in out)

    @tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
    def _refine_chunk(self, x, lam, xi, steps, net):
        lams, xis, value = mfb.refine(x, net, *self._split(lam, xi), steps)
        return tf.concat(lams, -1), tf.concat(xis, -1), value

    @tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
    def _fit_chunk(self, x, steps, net):
        lams, xis = mfb.start(tf.shape(x)[0], net, self.input_dim)
        lams, xis, value = mfb.refine(x, net, lams, xis, steps)
        parts = mfb.bound_terms(x, net, lams, xis, held=True)
        return (tf.concat(lams, -1), tf.concat(xis, -1), value, parts["fit"], parts["rest"],
                parts["units"])

    def _specs(self, terms: bool = False) -> tuple:
        specs = (tf.TensorSpec([None, sum(self.lam_sizes)]),
                 tf.TensorSpec([None, sum(self.xi_sizes)]), tf.TensorSpec([None]))
        if terms:
            specs += (tf.TensorSpec([None]), tf.TensorSpec([None]),
                      tf.TensorSpec([None, self.latent_dim]))
        return specs

    def refine(self, x, lam, xi, steps: int):
        """``steps`` updates of flat parameters ``lam [n, L*K]``, ``xi [n, D+(L-1)*K]``.

        Rows are refined a chunk at a time. Returns ``(lam, xi, bound [n])``.
        """
        tensors = [tf.convert_to_tensor(t, tf.float32) for t in (x, lam, xi)]
        return self._by_chunks(self._refine_chunk, tensors, self._specs(), steps)

    @tf.function(autograph=False, reduce_retracing=True)
    def _refine_rows(self, x, lam, xi):
        return self.refine(x, lam, xi, self.mean_field_steps)

    @tf.function(autograph=False, reduce_retracing=True)
    def _fit_rows(self, x):
        return self._by_chunks(self._fit_chunk, (x,), self._specs(terms=True),
                               self.mean_field_eval_steps)

    def _fit_key(self) -> list:
        return tf.nest.flatten(self.network()) + [tf.constant(float(self.mean_field_eval_steps))]

    def _fit_or_reuse(self, x):
        """``_fit_rows(x)``, or what it gave for the same rows last if the key is unchanged.

        Not under Keras' ``jit_compile=True`` (XLA takes no variable whose shape changes).
        """
        if getattr(self, "_jit_compile", False):
            return self._fit_rows(x)
        last, key = self._last_fit, self._fit_key()
        found, where = last.lookup(x, key)

        def fresh():
            outputs = self._fit_rows(x)
            with tf.control_dependencies(last.store(x, outputs, key)):
                return tuple(tf.identity(t) for t in outputs)

        return tf.cond(found, lambda: tuple(tf.gather(v, where) for v in last.outputs), fresh)

    def fitted(self, x) -> dict:
        """Fresh mean-field parameters for rows ``x`` (``mean_field_eval_steps`` updates).

        Returns ``{"lams": [...], "xis": [...], "bound": [n], "fit": [n], "rest": [n],
        "units": [n, K]}`` (the last three :func:`tfvae.models.mean_field_bound.bound_terms`'
        parts at the fitted parameters). Within one traced
        function the parameters of one input tensor are fitted once and shared by
        the hooks that ask for them (evaluation asks for the bound, the means and
        the KL per unit of the same batch); rows among those fitted last, under the
        same weights, are not fitted again (:class:`_LastFit`).
        """
        x = tf.convert_to_tensor(x, tf.float32)
        eager = tf.executing_eagerly()
        memo = self._memo
        if not eager and memo.key is not None and memo.key == x.ref():
            return memo.value
        lam, xi, value, fit, rest, units = self._fit_or_reuse(x)
        lams, xis = self._split(lam, xi)
        result = {"lams": lams, "xis": xis, "bound": value, "fit": fit, "rest": rest,
                  "units": units}
        memo.key, memo.value = (None, None) if eager else (x.ref(), result)
        return result

    # -------------------------------------------------------------- training
    def compile(self, optimizer="adam", steps_per_execution=None, jit_compile=None, **kwargs):
        """As :meth:`tfvae.models.steps.TrainingSteps.compile`; ``jit_compile`` defaults to False.

        The refinement and the bound's loops are XLA-compiled functions of their
        own, and a batch's chunks are refined side by side; with
        ``jit_compile=True`` Keras makes the whole step one XLA program, which runs
        them one after another.
        """
        super().compile(optimizer, steps_per_execution, jit_compile=bool(jit_compile), **kwargs)

    def fit(self, *args, **kwargs):
        """Keras ``fit``; on arrays the row indices are passed as ``y`` (row i keeps parameters i).

        A dataset must yield ``(x, index)`` batches, ``index`` the rows' int
        indices below ``train_examples``.
        """
        call = inputs.bind(keras.Model.fit, args, kwargs)
        x = call.get("x")
        if call.get("y") is None and not isinstance(x, (tf.data.Dataset, dict)) \
                and hasattr(x, "__len__"):
            if len(x) != self.train_examples:
                raise ConfigError(
                    f"this model keeps mean-field parameters for train_examples="
                    f"{self.train_examples} rows, but fit got {len(x)}: fit on the rows it was "
                    "built for, or build it with train_examples=len(x)")
            call["y"] = np.arange(len(x), dtype=np.int32)
        return super().fit(**call)

    @plain_trace
    def train_step(self, data):
        """Refines the batch's parameters and stores them, then one step on the weights."""
        if is_block(data) or not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ConfigError(
                "a mean-field SBN trains on (x, index) batches, index the rows' positions in "
                "the training data: call fit on the training array (it passes them), or give a "
                "dataset of (x, index) pairs")
        x, index = tf.convert_to_tensor(data[0], tf.float32), tf.cast(data[1], tf.int32)
        index = tf.reshape(index, [-1])
        lam, xi, _ = self._refine_rows(x, tf.gather(self.variational_logits, index),
                                       tf.gather(self.variational_xi, index))
        self.variational_logits.scatter_nd_update(index[:, None], lam)
        self.variational_xi.scatter_nd_update(index[:, None], xi)
        loss, values = self._step((x, tf.stop_gradient(lam), tf.stop_gradient(xi)))
        return self._record(loss, values)

    def objective(self, batch, training=True, seed=None):
        """The negative bound of ``batch = (x, lam, xi)`` with the parameters held.

        ``kl_weight`` (warm-up) weights every term but ``log p(x|z_1)``'s. The rows
        are taken in one part per core, which run side by side outside XLA.
        """
        net, tensors = self.network(), [tf.convert_to_tensor(t, tf.float32) for t in batch]
        n, cores = tf.shape(tensors[0])[0], os.cpu_count() or 1
        sizes = tf.stack([(n + i) // cores for i in range(cores)])
        parts = [mfb.bound_terms(x, net, *self._split(lam, xi), held=True)
                 for x, lam, xi in zip(*[tf.split(t, sizes) for t in tensors], strict=True)]
        fit, rest = (tf.concat([part[name] for part in parts], 0) for name in ("fit", "rest"))
        loss = -tf.reduce_mean(fit + self.kl_weight * rest)
        return loss, {"reconstruction": -fit, "kl": -rest}

    # ------------------------------------------------------- evaluation hooks
    def _posterior(self, lam):
        return tfd.Independent(tfd.Bernoulli(logits=lam, dtype=tf.float32),
                               reinterpreted_batch_ndims=1)

    def encode(self, x, training=None):
        """The fitted mean-field posterior of ``z_1`` for new rows ``x``."""
        return self._posterior(self.fitted(x)["lams"][0])

    def elbo_terms(self, x, seed=None, training=None):
        """The mean-field bound of new rows: ``reconstruction`` and ``kl`` as its two parts.

        ``reconstruction`` is minus the bound on ``E_q[log p(x|z_1)]`` and ``kl``
        minus the rest (the other layers' terms, the prior's and the entropy).
        """
        fit = self.fitted(x)
        lam = fit["lams"][0]
        return {"reconstruction": -fit["fit"], "kl": -fit["rest"],
                "z": tf.cast(lam > 0.0, tf.float32), "q": self._posterior(lam)}

    def log_weights(self, x, k, seed=None):
        """``log p(x, z) - log q(z)`` with ``z`` drawn from the fitted posterior, ``[k, batch]``."""
        lams = self.fitted(x)["lams"]
        seeds = tfp.random.split_seed(tfp.random.sanitize_seed(seed), n=len(lams))
        zs = [tf.cast(tf.random.stateless_uniform(tf.concat([[k], tf.shape(lam)], 0), seed=s,
                                                  alg=UNIFORM_ALG) < tf.sigmoid(lam), tf.float32)
              for lam, s in zip(lams, seeds, strict=True)]  # [k, batch, K] per layer
        log_p = self.log_likelihood(zs[0], x) + log_bernoulli(self.prior_logits(), zs[-1])
        for below, above, net in zip(zs[:-1], zs[1:], self.generators, strict=True):
            log_p += log_bernoulli(_flat(net)(above), below)
        return log_p - tf.add_n([log_bernoulli(lam, z) for lam, z in zip(lams, zs, strict=True)])

    def posterior_mean(self, x):
        """Fitted means of ``z_1``, ``[batch, latent]``."""
        return tf.sigmoid(self.fitted(x)["lams"][0])

    def posterior_code(self, x):
        """The fitted posterior's mode of ``z_1`` (means above 1/2)."""
        return tf.cast(self.fitted(x)["lams"][0] > 0.0, tf.float32)

    def kl_per_dim(self, x):
        """Per unit of ``z_1``: minus what it adds to the bound's ``kl`` part (its
        conditional's or the prior's term and its entropy)."""
        return -self.fitted(x)["units"]

    def call(self, x, training=None):
        """Decoder means at the mode of each row's fitted posterior, ``[batch, D]``."""
        x = tf.convert_to_tensor(x)
        if x.dtype == tf.uint8:
            x = tf.cast(x, tf.float32)
        if x.shape.rank != 2:
            x = tf.reshape(x, [-1, self.input_dim])
        return self._decoder_mean(self.posterior_code(x), training)

    def reconstruct_sample(self, x, seed: int | None = None) -> np.ndarray:
        """Decoder means at one draw from each row's fitted posterior."""
        from tfvae.runtime import stateless_seed

        x = tf.constant(inputs.rows(self, x, "reconstruct_sample", check=False))
        z = self.encode(x).sample(seed=stateless_seed(0 if seed is None else seed, 5))
        return self.decode_mean(z).numpy()

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {**super().get_config(), "train_examples": self.train_examples,
                "stochastic_layers": self.stochastic_layers, "learn_prior": self.learn_prior,
                "mean_field_steps": self.mean_field_steps,
                "mean_field_eval_steps": self.mean_field_eval_steps}
