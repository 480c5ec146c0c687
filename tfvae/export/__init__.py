"""Export of trained models to SavedModel and LiteRT (TFLite) for deployment.

* :mod:`~tfvae.export.manifest`: names, the manifest and its checks, the
  output folder (no TensorFlow);
* :mod:`~tfvae.export.graph`: the exported ``decode``/``sample``/``encode`` graphs;
* :mod:`~tfvae.export.litert`: conversion to LiteRT, op/size/output checks,
  running LiteRT files;
* :mod:`~tfvae.export.exporting`: :func:`export` and :func:`export_run`;
* :mod:`~tfvae.export.export_dir`: :class:`ExportDir`, :func:`draw_noise`,
  :func:`sample_from_noise`.

Samplers take their noise as an input, so the graphs hold builtin LiteRT ops
only and the same noise gives the same images from Keras, the SavedModel and
LiteRT:

- ``gaussian``: ``eps ~ N(0, I)`` is the code;
- ``bernoulli``: uniforms ``u`` give ``z = u < sigmoid(prior logits)``;
- ``ae-gmm``: a uniform ``u`` picks a mixture component by inverse CDF and
  ``eps ~ N(0, I)`` gives ``z = mu_k + L_k eps``.

Names are imported on first use (PEP 562): ``import tfvae.export`` is light.

Example:
  >>> from tfvae.export import ExportDir, draw_noise, export_run
  >>> export_run("runs/z20", "export/z20")
  >>> noise = draw_noise("export/z20", n=16, seed=0)
  >>> images = ExportDir("export/z20").run("sample", noise)["image"]
"""

from __future__ import annotations

import importlib

from tfvae.export.manifest import (  # noqa: F401  (re-exported names)
    FORMAT,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    PRECISIONS,
    QUANTIZE_NAMES,
    SAVED_MODEL,
    SIGNATURES,
    STEMS,
    ExportError,
    check_out,
    is_export_dir,
    read_manifest,
    tflite_name,
)

_LAZY = {
    "export": "tfvae.export.exporting",
    "export_run": "tfvae.export.exporting",
    "representative_images": "tfvae.export.exporting",
    "ExportDir": "tfvae.export.export_dir",
    "draw_noise": "tfvae.export.export_dir",
    "noise_inputs": "tfvae.export.export_dir",
    "sample_from_noise": "tfvae.export.export_dir",
    "BACKENDS": "tfvae.export.export_dir",
    "LiteRTModel": "tfvae.export.litert",
    "convert": "tfvae.export.litert",
    "check_builtin_ops": "tfvae.export.litert",
    "check_size": "tfvae.export.litert",
    "tflite_ops": "tfvae.export.litert",
    "export_module": "tfvae.export.graph",
}


def __getattr__(name):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'tfvae.export' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
