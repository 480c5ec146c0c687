"""Run by tests/test_distribute.py in a fresh process (logical devices and
multi-worker clusters must be configured before TensorFlow starts).

Usage:
  python distribute_worker.py mirrored DATA.npy OUT_DIR RESULT.json
    (one-device and mirrored runs of both VAEs, then a mirrored resume)
  python distribute_worker.py multiworker DATA.npy OUT_DIR WEIGHTS.npz
    (TF_CONFIG set by the caller)
  python distribute_worker.py onedevice DATA.npy OUT_DIR RESULT.json
    (MirroredStrategy with the one device the machine has)
"""

import json
import sys

import numpy as np
from conftest import SMALL_RUN  # this script's folder is first on sys.path

TINY = dict(SMALL_RUN, epochs=2, batch_size=64, seed=0)


def replica_values(variable):
    values = getattr(variable, "values", (variable,))
    return [float(v.numpy()) for v in values]


def mirrored(data, out, result_path):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import tfvae

    class Probe(tfvae.keras.callbacks.Callback):
        """Records the replica count and each replica's copy of the baseline."""

        def on_train_end(self, logs=None):
            self.seen = {"replicas": self.model.distribute_strategy.num_replicas_in_sync}
            if hasattr(self.model, "baseline_mean"):
                self.seen["baseline"] = replica_values(self.model.baseline_mean)

    results = {}
    for model in ("gaussian", "bernoulli"):
        for strategy in ("default", "mirrored"):
            probe = Probe()
            run = tfvae.train(model=model, data_dir=data, strategy=strategy,
                              out=f"{out}/{model}-{strategy}", callbacks=[probe], **TINY)
            history = json.load(open(run.path / "metrics.json"))
            results[f"{model}-{strategy}"] = {
                "loss": history[-1]["loss"], "test_elbo": run.evaluation["elbo"], **probe.seen,
            }
    # Resume the mirrored run for one more epoch, under the same strategy.
    probe = Probe()
    run = tfvae.train(resume=f"{out}/bernoulli-mirrored", epochs=3, callbacks=[probe],
                      figures=False, verbose=0)
    results["bernoulli-resumed"] = {
        "epochs": len(json.load(open(run.path / "metrics.json"))), **probe.seen,
    }
    with open(result_path, "w") as f:
        json.dump(results, f)


def multiworker(data, out, weights_path):
    import tfvae

    final = {}

    class Dump(tfvae.keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            final.update({f"w{i}": w for i, w in enumerate(self.model.get_weights())})

    # The autoencoder: its validation loss draws no noise, so a two-worker
    # validation can be compared exactly with a one-worker evaluation.
    run = tfvae.train(model="ae-gmm", data_dir=data, strategy="multiworker", out=out,
                      callbacks=[Dump()], **{**TINY, "epochs": 1, "val_fraction": 0.2})
    np.savez(weights_path, role=run.role, **final)


def onedevice(data, out, result_path):
    """Mirrored on one device (what a one-GPU or CPU machine has): tfvae.train and user fit."""
    import tfvae
    from tfvae.distribute import make_strategy

    run = tfvae.train(model="bernoulli", data_dir=data, strategy="mirrored", out=out,
                      **{**TINY, "epochs": 1})
    strategy = make_strategy("mirrored")
    x = (np.load(data)[:256] > 127).astype(np.float32).reshape(256, -1)
    with strategy.scope():
        model = tfvae.GaussianVAE(latent_dim=2, hidden=(16,))
        model.compile(optimizer=tfvae.keras.optimizers.Adam(1e-3))
    history = model.fit(x, epochs=1, batch_size=64, verbose=0)
    with open(result_path, "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "run_status": run.status["status"],
                   "user_fit_loss": history.history["loss"][0]}, f)


if __name__ == "__main__":
    {"mirrored": mirrored, "multiworker": multiworker, "onedevice": onedevice}[
        sys.argv[1]](*sys.argv[2:])
