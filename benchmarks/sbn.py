"""Sigmoid belief networks on the DisARM protocol, beside the official code's figures.

The protocol of the official DisARM code (Dong, Mnih & Tucker 2020,
google-research ``disarm/binary``, flags ``--encoder_type=nonlinear
--demean_input --initialize_with_bias``), on Debian's Fashion-MNIST IDX files:

* 200 binary latents; nonlinear: encoder 784-200-200-200 and decoder
  200-200-200-784 with LeakyReLU(0.3); linear: no hidden layer;
  ``two-layer`` models stack two layers of 200 (``--model sbn``);
* factorised Bernoulli prior with learned logits, plain SGD at 1e-2; the
  networks with Adam at 1e-4; batch 50; dynamic binarization;
* the first 50,000 training images train, the last 10,000 validate, the
  10,000 test images test; the decoder's output bias starts at the logit of
  the training mean and the encoder's input is centred on it;
* at 4,000, 12,000, 20,000 and 34,000 steps (1,000 steps an epoch): the
  training ELBO (one sample, over the 50,000 training images) and the
  100-sample bound on validation and test.

    python benchmarks/sbn.py --models nonlinear --estimators disarm rloo

Prints one JSON line per evaluation (tfvae's figures as log-likelihoods, so
higher is better; the official code logs their negatives), the training
images/s with evaluation excluded (over all epochs so far, and
``steady_images_per_sec``: the median epoch after the first, which includes
XLA's compilation), and the official code's figures at the same step where
the issue gives them. ``steady_ratio_to_official`` divides the steady rate
by ``--official-images-per-sec`` (default: the issue's 5,950): pass the
official code's rate measured on the same machine (benchmarks/README.md
says how to time it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: The official code's figures (issue 17), negated to log-likelihoods: step ->
#: (train ELBO, test 100-sample bound), for the nonlinear one-layer model.
OFFICIAL = {
    "disarm": {4000: (-279.26, -268.78), 12000: (-268.83, -259.70), 20000: (-263.31, -255.23),
               34000: (-257.57, -250.47)},
    "rloo": {4000: (-279.88, -269.04), 12000: (-270.42, -260.77), 20000: (-265.12, -256.04),
             34000: (-259.58, -251.73)},
}
OFFICIAL_IMAGES_PER_SEC = 5950

_DENSE = dict(hidden=(200, 200), decoder_hidden=(200, 200), activation="leaky_relu")
_LINEAR = dict(hidden=(), decoder_hidden=())
#: Model name -> tfvae options.
MODELS = {
    "nonlinear": dict(model="bernoulli", **_DENSE),
    "linear": dict(model="bernoulli", **_LINEAR),
    "two-layer": dict(model="sbn", stochastic_layers=2, **_LINEAR),
    "two-layer-nonlinear": dict(model="sbn", stochastic_layers=2, **_DENSE),
}


#: 50,000 training images in batches of 50.
STEPS_PER_EPOCH = 50_000 // 50


def protocol_config(args, name: str, estimator: str, **overrides):
    """The protocol's :class:`tfvae.Config` for model ``name``, training to the last eval step."""
    import tfvae

    options = dict(
        data_dir=args.data_dir, binarize="dynamic", latent_dim=200, batch_size=50, lr=1e-4,
        learn_prior=True, prior_lr=1e-2, val_size=10_000, val_order="end", center_input=True,
        output_bias_from_data=True, estimator=estimator, num_samples=2,
        epochs=max(args.eval_steps) // STEPS_PER_EPOCH, iwae_k=1, seed=args.seed,
        **MODELS[name])
    options.update(overrides)
    return tfvae.Config(**options)


def run(args, name: str, estimator: str, config=None, extra=None, label=None) -> list:
    """Trains one protocol run, printing (and returning) a JSON row at each eval step.

    ``config`` replaces :func:`protocol_config`'s; ``extra(model, splits, train_bits)``
    adds fields to the last row; ``label`` names the run in the rows (default: ``estimator``).
    """
    import tfvae
    from tfvae.evaluation import evaluate
    from tfvae.runs.run_data import load_data

    keras = tfvae.keras
    at = sorted(args.eval_steps)
    config = config or protocol_config(args, name, estimator)
    _, splits = load_data(dataclasses.replace(config))  # the run's own data, for evaluations
    train_bits = splits.train_rows(seed=args.seed + 1)  # one fixed draw of the training bits
    clock = {"train": 0.0, "images": 0}
    rows = []

    class Measure(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t_last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            clock["train"] += self.t_last - self.t0
            clock["images"] += 50_000
            clock.setdefault("epochs", []).append(self.t_last - self.t0)
            step = (epoch + 1) * STEPS_PER_EPOCH
            if step not in at:
                return
            model = self.model
            row = {"program": "tfvae", "model": name, "estimator": label or estimator,
                   "step": step,
                   "train_elbo": evaluate(model, train_bits, k=1, seed=1)["elbo"],
                   "valid_bound_k100": evaluate(model, splits.val, k=100, seed=2)[
                       "log_likelihood"],
                   "test_bound_k100": evaluate(model, splits.test, k=100, seed=3)[
                       "log_likelihood"],
                   "train_images_per_sec": clock["images"] / clock["train"],
                   # After the first epoch (which includes XLA's compilation): the median epoch.
                   "steady_images_per_sec":
                       50_000 / statistics.median(clock["epochs"][1:] or clock["epochs"])}
            row["steady_ratio_to_official"] = (row["steady_images_per_sec"]
                                               / args.official_images_per_sec)
            official = OFFICIAL.get(estimator, {}).get(step) if name == "nonlinear" else None
            if official:
                row["official_train_elbo"], row["official_test_bound_k100"] = official
            if extra is not None and step == at[-1]:
                row.update(extra(model, splits, train_bits))
            rows.append(row)
            print(json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tfvae.train(config, out=Path(tmp) / "run", verbose=0, figures=False,
                    callbacks=[Measure()])
    return rows


def main():
    # As the tfvae command does (cli/main.py): oneDNN kernels on unless the user says.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as in the command
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist) "
                        "[default: %(default)s]")
    p.add_argument("--models", nargs="+", default=["nonlinear"], choices=list(MODELS),
                   help="models to train, one run each [default: nonlinear]")
    p.add_argument("--estimators", nargs="+", default=["disarm", "rloo"],
                   help="gradient estimators, one run each (rloo with 2 samples) "
                        "[default: disarm rloo]")
    p.add_argument("--eval-steps", nargs="+", type=int, default=[4000, 12000, 20000, 34000],
                   help="steps (multiples of 1,000) at which to evaluate; the last ends training")
    p.add_argument("--seed", type=int, default=0, help="run seed [default: 0]")
    p.add_argument("--official-images-per-sec", type=float, default=OFFICIAL_IMAGES_PER_SEC,
                   help="the official code's training images/s on the machine running this "
                        "benchmark (default: the issue's figure); steady_ratio_to_official "
                        "divides by it")
    args = p.parse_args()
    if not args.official_images_per_sec > 0:
        sys.exit(f"--official-images-per-sec must be a positive rate, got "
                 f"{args.official_images_per_sec}")
    if not os.path.isdir(args.data_dir):
        sys.exit(f"{args.data_dir} not found: apt-get install dataset-fashion-mnist")
    for name in args.models:
        for estimator in args.estimators:
            run(args, name, estimator)
    print(json.dumps({"official_train_images_per_sec": args.official_images_per_sec}), flush=True)


if __name__ == "__main__":
    main()
