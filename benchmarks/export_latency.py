"""Latency and throughput of an exported decoder: Keras, SavedModel and LiteRT.

For one model (a run directory, or by default an untrained 784-400-20
Gaussian VAE: speed does not depend on the weights' values) this exports the
model with :func:`tfvae.export.export` and measures, single-threaded:

- per-sample latency at batch 1 (median over rounds, microseconds);
- throughput at batch 256 (images per second);
- file sizes;

for the Keras model, the SavedModel ``decode`` signature, the exported
``decoder*.tflite`` files at float32, float16 and int8 and, as the target to
meet, a bare ``TFLiteConverter.from_keras_model`` conversion of the same
decoder weights (the exported decoder should be within 1.1x of it). Backends
are interleaved round by round so that machine noise hits them alike.

Issue 15's target, the float32 LiteRT decoder at batch 1 within 2x of the
time to read its weights once, is measured here too: ``weights_read_us`` is
the median time of one pass over an array of the decoder's weight bytes
(``numpy.max`` of it, one core), and ``litert_float32`` is timed through
:class:`tfvae.export.LiteRTModel` (set, invoke, get) with one interpreter
thread and, as ``litert_float32_2threads``, with two.

Prints one JSON line per measurement, then a summary line.

Usage:
  python benchmarks/export_latency.py [--run RUN_DIR] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _timer(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="run directory (default: untrained 784-400-20)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200, help="batch-1 calls per round (LiteRT)")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the tfvae command does
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as in the command
    import tensorflow as tf

    # One thread everywhere: LiteRT num_threads=1 and TensorFlow's pools.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import tfvae
    from tfvae import export
    from tfvae._keras import keras
    from tfvae.export.graph import clone_body
    from tfvae.networks import split_head
    from tfvae.runs.store import load_model

    if args.run:
        model, _ = load_model(args.run)
    else:
        keras.utils.set_random_seed(0)
        model = tfvae.GaussianVAE(input_dim=784, latent_dim=20, hidden=(400,))

    tmp = Path(tempfile.mkdtemp(prefix="tfvae-bench-"))
    export.export(model, tmp / "export")

    # The bare conversion: the same decoder weights as a Keras model, converted directly.
    layers, _ = split_head(model.decoder)
    head = keras.layers.Activation("sigmoid" if model.likelihood == "bernoulli" else "linear")
    bare = clone_body(layers + [head], model.latent_dim, "bare_decoder")
    bare_files = {}
    for precision in export.PRECISIONS:
        converter = tf.lite.TFLiteConverter.from_keras_model(bare)
        if precision != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "float16":
            converter.target_spec.supported_types = [tf.float16]
        path = tmp / f"bare_{precision}.tflite"
        path.write_bytes(converter.convert())
        bare_files[precision] = path

    saved = tf.saved_model.load(str(tmp / "export" / export.SAVED_MODEL))
    decode_sig = saved.signatures["decode"]
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, model.latent_dim)).astype(np.float32) for b in (1, 256)}
    tensors = {b: tf.constant(v) for b, v in inputs.items()}

    def litert(path, threads=1):
        lite = export.LiteRTModel(path, num_threads=threads)
        name = next(iter(lite.inputs))
        return lambda b: (lambda: lite(**{name: inputs[b]}))

    backends = {
        "keras": lambda b: (lambda: model.decode_mean(tensors[b]).numpy()),
        "savedmodel": lambda b: (lambda: decode_sig(z=tensors[b])["image"].numpy()),
    }
    sizes = {"savedmodel": sum(
        p.stat().st_size for p in (tmp / "export" / export.SAVED_MODEL).rglob("*") if p.is_file()
    )}
    for precision in export.PRECISIONS:
        name = export.tflite_name("decode", precision)
        backends[f"litert_{precision}"] = litert(tmp / "export" / name)
        sizes[f"litert_{precision}"] = (tmp / "export" / name).stat().st_size
        backends[f"bare_{precision}"] = litert(bare_files[precision])
        sizes[f"bare_{precision}"] = bare_files[precision].stat().st_size
    two = export.tflite_name("decode", "float32")
    backends["litert_float32_2threads"] = lambda b: litert(tmp / "export" / two, 2)(b)
    # The reference of issue 15: one pass over as many bytes as the decoder's weights.
    weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.decoder.weights)
    weights = np.random.default_rng(1).random(weight_bytes // 4).astype(np.float32)
    backends["weights_read"] = lambda b: (lambda: weights.max())

    # Outputs agree (max abs vs Keras at batch 256).
    reference = model.decode_mean(tensors[256]).numpy()
    parity = {}
    for name, make in backends.items():
        if name == "weights_read":
            continue
        out = make(256)()
        out = next(iter(out.values())) if isinstance(out, dict) else out
        parity[name] = float(np.max(np.abs(out - reference)))

    fns = {name: {b: make(b) for b in (1, 256)} for name, make in backends.items()}
    fast = ("litert", "bare", "weights")
    calls1 = {name: (args.calls if name.startswith(fast) else 30) for name in fns}
    for name in fns:  # warm up
        fns[name][1]()
        fns[name][256]()
    lat = {name: [] for name in fns}
    thr = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            lat[name].append(_timer(fn[1], calls1[name]))
            thr[name].append(256 / _timer(fn[256], 3))

    results = {}
    for name in fns:
        row = {
            "backend": name,
            "batch1_latency_us": round(float(np.median(lat[name])) * 1e6, 1),
            "batch1_latency_p90_us": round(float(np.percentile(lat[name], 90)) * 1e6, 1),
            "batch256_images_per_sec": round(float(np.median(thr[name]))),
            "file_bytes": sizes.get(name),
            "max_abs_vs_keras": parity.get(name),
            "threads": 2 if name.endswith("2threads") else 1,
        }
        if name == "weights_read":
            row = {"backend": name, "weights_read_us": row["batch1_latency_us"],
                   "weight_bytes": weight_bytes}
        results[name] = row
        print(json.dumps(row), flush=True)
    summary = {"summary": "exported decoder vs bare from_keras_model conversion (latency ratio)"}
    for precision in export.PRECISIONS:
        summary[precision] = round(
            results[f"litert_{precision}"]["batch1_latency_us"]
            / results[f"bare_{precision}"]["batch1_latency_us"], 3)
    summary["target"] = 1.1
    read = results["weights_read"]["weights_read_us"]
    summary["litert_float32_vs_weights_read"] = round(
        results["litert_float32"]["batch1_latency_us"] / read, 3)
    summary["litert_float32_2threads_vs_weights_read"] = round(
        results["litert_float32_2threads"]["batch1_latency_us"] / read, 3)
    summary["weights_read_target"] = 2.0
    summary["model"] = f"{model.model_type} {model.input_dim}-{model.hidden}-{model.latent_dim}"
    print(json.dumps(summary), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
