"""Images/s of ``model.fit`` in user code, per compile setting, beside the fused path.

What a user gets from Keras' own loop with tfvae's ``compile`` defaults
(``tfvae.models.steps.STEPS_PER_EXECUTION`` and ``JIT_COMPILE``), with Keras'
defaults (one step per execution, no XLA), and with other settings; and the
fused blocks of ``tfvae.data.blocks`` passed to ``fit``. Each setting runs in
its own process on the same data (Fashion-MNIST, static bits, 784-400-20,
batch 128, Adam 1e-3): the median seconds of the epochs after the first
(which compiles), as images/s.

    python benchmarks/user_fit.py --epochs 4
    python benchmarks/user_fit.py --arch conv --settings default keras-1 jit-32 nojit-32

Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
opts = json.loads(sys.argv[1])
import numpy as np
import tfvae
from tfvae import data
keras = tfvae.keras
ds = data.load_dataset(data_dir=opts["data_dir"])
x = data.binarize_static(ds.x_train, 0, ds.scaled).astype(np.float32)[:opts["limit"]]
del ds
hidden = (400,) if opts["arch"] == "mlp" else ()  # conv: the peer's conv VAE
model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=hidden, arch=opts["arch"])
kwargs = {k: opts[k] for k in ("steps_per_execution", "jit_compile") if opts[k] is not None}
model.compile(optimizer=keras.optimizers.Adam(1e-3), **kwargs)
times = []
class Clock(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.t0)
if opts["blocks"]:
    b = data.blocks(x, batch_size=128, seed=0)
    model.fit(b.dataset, steps_per_epoch=b.steps_per_epoch, epochs=opts["epochs"], verbose=0,
              callbacks=[Clock()])
else:
    model.fit(x, batch_size=128, epochs=opts["epochs"], verbose=0, callbacks=[Clock()])
later = sorted(times[1:]) or times
median = later[len(later) // 2]
print(json.dumps({"setting": opts["setting"], "arch": opts["arch"],
                  "steps_per_execution": int(model._steps_per_execution.numpy()),
                  "jit_compile": bool(model.jit_compile), "blocks": opts["blocks"],
                  "first_epoch_sec": times[0], "sec_per_epoch_median": median,
                  "images_per_sec": len(x) / median}))
"""

#: name -> (steps_per_execution, jit_compile, fused blocks); None: tfvae's default.
SETTINGS = {
    "default": (None, None, False),
    "keras-1": (1, False, False),
    "nojit-32": (32, False, False),
    "jit-1": (1, True, False),
    "jit-8": (8, True, False),
    "jit-32": (32, True, False),
    "jit-100": (100, True, False),
    "blocks": (1, False, True),
}


def main():
    # As the tfvae command does (cli/main.py): oneDNN kernels on unless the user says.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--limit", type=int, default=None,
                   help="train on the first N images only (slow settings)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the settings in turn this many times; the summary gives medians")
    args = p.parse_args()
    rates = {name: [] for name in args.settings}
    for _ in range(args.rounds):
        for name in args.settings:
            spe, jit, fused = SETTINGS[name]
            opts = {"setting": name, "data_dir": args.data_dir, "epochs": args.epochs,
                    "arch": args.arch, "steps_per_execution": spe, "jit_compile": jit,
                    "blocks": fused, "limit": args.limit}
            done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            line = done.stdout.strip().splitlines()[-1]
            rates[name].append(json.loads(line)["images_per_sec"])
            print(line, flush=True)
    summary = {name: sorted(v)[len(v) // 2] for name, v in rates.items()}
    print(json.dumps({"summary": "median images/s", "arch": args.arch, "rounds": args.rounds,
                      **summary}), flush=True)


if __name__ == "__main__":
    main()
