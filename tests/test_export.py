"""Tests of tfvae.export, `tfvae export` and `tfvae sample --backend` (offline, seeded).

One tiny untrained model per family is exported once (module fixtures); parity
is checked Keras vs SavedModel vs LiteRT on fresh random inputs with the
tolerances below, and the measured max abs differences are printed (-s).
The quick suite converts float32 LiteRT files only; the float16 and int8
conversions are checked in the slow suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tfvae import export
from tfvae.config import Config

# tfvae runs LiteRT files with ai-edge-litert's interpreter: TensorFlow's own (deprecated)
# one is an error here.
pytestmark = pytest.mark.filterwarnings("error:.*tf.lite.Interpreter is deprecated")

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = ROOT / "exported"
# Max abs difference on probabilities/means and posterior parameters, per precision.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "int8": 5e-2}
FAMILIES = ("gaussian", "bernoulli", "ae-gmm")
MEASURED: dict = {}


def tiny_model(family, images, latent=4):
    from tfvae._keras import keras
    from tfvae.runs.families import FAMILIES as SPECS

    keras.utils.set_random_seed(0)
    config = Config(model=family, latent_dim=latent, hidden=(32,), components=3,
                    learn_prior=family == "bernoulli", likelihood="bernoulli",
                    input_dim=784, image_shape=(28, 28))
    spec = SPECS[family]
    model = spec.build(config)
    if family == "bernoulli":  # a learned prior away from 0.5, as after training
        model._prior_logits.assign(np.linspace(-2.0, 2.0, latent).astype(np.float32))
    if spec.post_fit is not None:
        spec.post_fit(model, images[:200], 0)
    return model


def _exporter(tmp_path_factory, images, precisions):
    cache = {}

    def get(family):
        if family not in cache:
            model = tiny_model(family, images)
            out = tmp_path_factory.mktemp("export") / family
            cache[family] = model, out, export.export(model, out, precisions=precisions)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def exports(tmp_path_factory, binary_images):
    """``family -> (model, export dir, manifest)``: float32 files, exported once on first use."""
    return _exporter(tmp_path_factory, binary_images, "float32")


@pytest.fixture(scope="module")
def quantized_exports(tmp_path_factory, binary_images):
    """``family -> (model, export dir, manifest)``: every precision (slow tests only)."""
    return _exporter(tmp_path_factory, binary_images, "all")


@pytest.fixture(params=list(FAMILIES))
def exported(request, exports):
    return exports(request.param)


@pytest.fixture(params=list(FAMILIES))
def quantized(request, quantized_exports):
    return quantized_exports(request.param)


@pytest.fixture(scope="module", autouse=True)
def report_parity():
    yield
    if MEASURED:
        print("\nmeasured max abs differences vs Keras:")
        for key, value in sorted(MEASURED.items()):
            print(f"  {' '.join(key):40s} {value:.3g}")


def keras_reference(model, signature, inputs):
    """What the Keras model gives for a signature's inputs, keyed by output name."""
    from tfvae._keras import tf

    if signature == "decode":
        return {"image": model.decode_mean(tf.constant(inputs["z"])).numpy()}
    if signature == "sample":
        return {"image": export.sample_from_noise(model, inputs)}
    q = model.encoder(tf.constant(inputs["x"]))
    if isinstance(q, tf.Tensor):  # the autoencoder's deterministic code
        return {"code": q.numpy()}
    out = {"mean": q.mean().numpy(), "scale": q.stddev().numpy()}
    if model.model_type == "bernoulli":
        out = {"probabilities": q.mean().numpy()}
    return out


def fresh_inputs(model, signature, images, n=7, seed=123):
    rng = np.random.default_rng(seed)
    if signature == "decode":
        z = rng.standard_normal((n, model.latent_dim)).astype(np.float32)
        if model.model_type == "bernoulli":
            z = (z > 0).astype(np.float32)
        return {"z": z}
    if signature == "sample":
        return export.draw_noise(model, n, seed)
    return {"x": images[rng.choice(len(images), n, replace=False)]}


# ---------------------------------------------------------------- layout


def check_layout(exported, precisions):
    model, out, manifest = exported
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {export.tflite_name(s, p) for s in export.SIGNATURES for p in precisions}
    assert expected | {"manifest.json", "saved_model/saved_model.pb"} <= names
    assert not {n for n in names if n.endswith(".tflite")} - expected
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert sorted(export.ExportDir(out, verify=True).precisions) == sorted(precisions)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["model_type"] == model.model_type
    assert manifest["latent_dim"] == model.latent_dim
    assert manifest["image_shape"] == [28, 28, 1]
    assert manifest["decoder_output"] == "probabilities"
    assert manifest["signatures"]["decode"]["inputs"]["z"] == {
        "shape": [-1, model.latent_dim], "dtype": "float32"}
    assert manifest["signatures"]["sample"]["outputs"]["image"]["shape"] == [-1, 784]
    assert {n["name"] for n in manifest["noise"]} == set(
        manifest["signatures"]["sample"]["inputs"])
    assert {"tensorflow", "ai_edge_litert", "tfvae"} <= set(manifest["versions"])
    if model.model_type == "ae-gmm":
        assert manifest["prior"]["components"] == 3
        assert manifest["signatures"]["encode"]["outputs"] == {
            "code": {"shape": [-1, 4], "dtype": "float32", "meaning": "deterministic code"}}


def check_builtin_ops_and_weights(exported):
    _, out, manifest = exported
    for signature, files in manifest["tflite"].items():
        weights = manifest["signatures"][signature]["weights"]
        for precision, name in files.items():
            content = (out / name).read_bytes()
            ops = export.check_builtin_ops(content, name)
            assert "FULLY_CONNECTED" in ops
            assert not any(op.startswith("CUSTOM") for op in ops)
            export.check_size(content, weights, precision, name)


def check_parity(exported, images, runs):
    """``runs``: the ``(backend, precision)`` pairs to compare with Keras."""
    model, out, _ = exported
    exported_dir = export.ExportDir(out)
    for signature in export.SIGNATURES:
        inputs = fresh_inputs(model, signature, images)
        reference = keras_reference(model, signature, inputs)
        for backend, precision in runs:
            result = exported_dir.run(signature, inputs, backend, precision)
            assert set(result) == set(reference)
            for key, ref in reference.items():
                assert result[key].shape == ref.shape and result[key].dtype == np.float32
                err = float(np.max(np.abs(result[key] - ref)))
                MEASURED[(model.model_type, signature, key, backend, precision)] = err
                assert err <= TOLERANCE[precision], (signature, key, backend, precision, err)


def check_dynamic_batch(exported, precision):
    model, out, manifest = exported
    exported_dir = export.ExportDir(out)
    for n in (1, 3, 33, 2):  # resizing up and down
        images = exported_dir.sample(n, seed=n, precision=precision)
        assert images.shape == (n, 784)
        assert np.all((images >= 0) & (images <= 1))
    noise = export.draw_noise(manifest, 5, seed=1)
    assert all(v.dtype == np.float32 and len(v) == 5 for v in noise.values())
    same = export.draw_noise(model, 5, seed=1)
    assert all(np.array_equal(noise[k], same[k]) for k in noise)


def test_layout_manifest_and_hashes(exported):
    check_layout(exported, ("float32",))


def test_every_tflite_file_is_builtin_and_holds_its_weights(exported):
    check_builtin_ops_and_weights(exported)


def test_parity_keras_savedmodel_litert(exported, binary_images):
    check_parity(exported, binary_images, [("savedmodel", "float32"), ("tflite", "float32")])


def test_samples_are_images_and_batch_is_dynamic(exported):
    check_dynamic_batch(exported, "float32")


@pytest.mark.slow
def test_quantized_files_layout_ops_parity_and_dynamic_batch(quantized, binary_images):
    """float16 and int8 (dynamic-range) files of every signature, beside float32."""
    check_layout(quantized, export.PRECISIONS)
    assert quantized[2]["int8"] == "dynamic-range"
    check_builtin_ops_and_weights(quantized)
    check_parity(quantized, binary_images, [("tflite", p) for p in export.PRECISIONS])
    check_dynamic_batch(quantized, "int8")


@pytest.mark.slow
def test_savedmodel_loads_without_tfvae(exports, tmp_path):
    # A process of its own (tfvae never imported; TensorFlow imported afresh): slow.
    # One family (ae-gmm: the most ops) is enough.
    model, out, manifest = exports("ae-gmm")
    noise = export.draw_noise(manifest, 4, seed=2)
    np.savez(tmp_path / "noise.npz", **noise)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(out / "saved_model")!r})
        noise = dict(np.load({str(tmp_path / "noise.npz")!r}))
        image = loaded.signatures["sample"](**{{k: tf.constant(v) for k, v in noise.items()}})
        z = tf.zeros([3, {model.latent_dim}])
        decoded = loaded.signatures["decode"](z=z)["image"]
        encoded = loaded.signatures["encode"](x=tf.zeros([2, 784]))
        assert "tfvae" not in sys.modules and "tfvae_cli" not in sys.modules
        assert decoded.shape == (3, 784), decoded.shape
        np.save({str(tmp_path / "image.npy")!r}, image["image"].numpy())
        print(sorted(encoded))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = export.sample_from_noise(model, noise)
    assert np.max(np.abs(np.load(tmp_path / "image.npy") - expected)) <= TOLERANCE["float32"]


# ---------------------------------------------------------------- refusals


def _save_module(fn, path):
    from tfvae._keras import tf

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([4, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="z")])
        def decode(self, z):
            return {"image": fn(tf.matmul(z, self.w))}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"decode": module.decode})
    return path


def test_non_builtin_ops_are_refused(tmp_path):
    from tfvae._keras import tf

    def inverse(h):  # MatrixInverse has no builtin LiteRT kernel: Flex only
        return tf.linalg.inv(h[:, :2, None] * tf.eye(2)[None])[:, 0, :]

    saved = _save_module(inverse, tmp_path / "inv")
    with pytest.raises(export.ExportError, match="MatrixInverse"):
        export.convert(saved, "decode")
    # Let it through with Select TF ops: the flatbuffer check still refuses the file.
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["decode"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS,
                                           tf.lite.OpsSet.SELECT_TF_OPS]
    content = converter.convert()
    assert "CUSTOM:FlexMatrixInverse" in export.tflite_ops(content)
    with pytest.raises(export.ExportError, match="non-builtin"):
        export.check_builtin_ops(content)


def test_random_ops_are_refused(tmp_path):
    from tfvae._keras import tf

    saved = _save_module(lambda h: h + tf.random.uniform(tf.shape(h)), tmp_path / "rand")
    with pytest.raises(export.ExportError, match="RANDOM_UNIFORM"):
        export.convert(saved, "decode")


def test_lost_weights_are_refused():
    with pytest.raises(export.ExportError, match="dropped weights"):
        export.check_size(b"\0" * 2800, weights=322_000, precision="float32", what="decoder")
    export.check_size(b"\0" * 1_290_000, weights=322_000, precision="float32", what="decoder")


def test_out_must_be_empty_or_a_previous_export(exports, tmp_path):
    import shutil

    model, shared, _ = exports("gaussian")
    out = tmp_path / "previous"
    shutil.copytree(shared, out)  # the module's export stays as it is for other tests
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(export.ExportError, match="not a tfvae export"):
            export.export(model, other, overwrite=overwrite)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(export.ExportError, match="--overwrite"):
        export.export(model, out)
    # tfvae deletes only an export's own files: a user's file among them is named, and
    # nothing is replaced.
    before = sorted(p.name for p in out.iterdir())
    (out / "mine.txt").write_text("mine")
    with pytest.raises(export.ExportError, match="mine.txt"):
        export.export(model, out, formats="savedmodel", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(before + ["mine.txt"])
    export.ExportDir(out, verify=True)
    # Without it, overwriting replaces the old export's files (its LiteRT files too).
    (out / "mine.txt").unlink()
    manifest = export.export(model, out, formats="savedmodel", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "saved_model"]
    assert manifest["saved_model"] is not None and not manifest["tflite"]
    assert export.ExportDir(out).precisions == ()


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_export_and_sample_across_backends(tiny_run, tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    runner = CliRunner()
    out = tmp_path / "exp"
    result = runner.invoke(cli, ["export", str(tiny_run), "--out", str(out),
                                 "--quantize", "none"])
    assert result.exit_code == 0, result.output
    manifest = export.read_manifest(out)
    assert manifest["training"]["config"]["latent_dim"] == 2
    assert manifest["metrics"]["elbo"] < 0
    assert sorted(manifest["tflite"]["sample"]) == ["float32"]
    result = runner.invoke(cli, ["export", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.output

    images = {}
    for source, backend in [(tiny_run, "keras"), (tiny_run, None), (out, "savedmodel"),
                            (out, "tflite"), (out, None), (tiny_run, "tflite")]:
        path = tmp_path / f"{backend}-{Path(source).name}.npy"
        chosen = [] if backend is None else ["--backend", backend]
        result = runner.invoke(cli, ["sample", str(source), "--n", "6", "--seed", "4",
                                     "--out", str(path)] + chosen)
        assert result.exit_code == 0, result.output
        images[(str(source), backend)] = np.load(path)
    reference = images[(str(tiny_run), "keras")]
    assert reference.shape == (6, 784)
    for key, value in images.items():
        assert np.max(np.abs(value - reference)) <= TOLERANCE["float32"], key
    result = runner.invoke(cli, ["sample", str(out), "--n", "2", "--out",
                                 str(tmp_path / "k.npy"), "--backend", "keras"])
    assert result.exit_code == 1 and "export" in result.output
    result = runner.invoke(cli, ["sample", str(out), "--n", "2", "--out",
                                 str(tmp_path / "f16.png"), "--precision", "float16"])
    assert result.exit_code == 1 and "no float16" in result.output
    assert "--quantize float16" in result.output  # a valid value of the option it names


# ---------------------------------------------------------------- committed


@pytest.mark.parametrize("family", list(FAMILIES))
def test_committed_reference_exports(family):
    folder = EXPORTED / family
    assert (folder / "manifest.json").is_file(), "rebuild exported/ (bash exported/build.sh)"
    exported_dir = export.ExportDir(folder, verify=True)  # hashes match the manifest
    manifest = exported_dir.manifest
    assert manifest["model_type"] == family and manifest["latent_dim"] == 20
    assert manifest["training"]["config"]["dataset"] in (None, "mnist-10k")
    assert manifest["metrics"]["elbo"] < 0
    for precision in ("float16", "int8"):
        images = exported_dir.sample(5, seed=0, precision=precision)
        assert images.shape == (5, 784) and images.dtype == np.float32
        assert np.all((images >= 0) & (images <= 1)) and images.std() > 0.05
        codes = exported_dir.run("encode", {"x": images}, precision=precision)
        assert all(v.shape == (5, 20) for v in codes.values())
        decoded = exported_dir.run("decode", {"z": np.zeros([2, 20], np.float32)},
                                   precision=precision)["image"]
        assert decoded.shape == (2, 784)
    total = sum(p.stat().st_size for p in EXPORTED.rglob("*") if p.is_file())
    assert total < 10e6


@pytest.mark.slow
def test_full_integer_int8_with_representative_data(binary_images, tmp_path):
    model = tiny_model("gaussian", binary_images)
    out = tmp_path / "full-int8"
    manifest = export.export(model, out, formats="tflite", precisions="int8",
                             representative=binary_images[:32])
    assert manifest["int8"] == "full-integer"
    inputs = fresh_inputs(model, "sample", binary_images)
    images = export.ExportDir(out).run("sample", inputs, precision="int8")["image"]
    err = float(np.max(np.abs(images - export.sample_from_noise(model, inputs))))
    MEASURED[("gaussian", "sample", "image", "tflite", "int8-full-integer")] = err
    assert err <= TOLERANCE["int8"]


# ---------------------------------------------------------------- files a user receives


def _copy(out, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    return copy


def test_a_changed_file_is_refused_before_it_runs(exports, tmp_path):
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    _, out, _ = exports("bernoulli")
    copy = _copy(out, tmp_path)
    damaged = copy / "sampler.tflite"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2: len(content) // 2 + 8192] = bytes(8192)
    damaged.write_bytes(bytes(content))
    with pytest.raises(export.ExportError, match="sampler.tflite does not match its sha256"):
        export.ExportDir(copy)
    result = CliRunner().invoke(cli, ["sample", str(copy), "--n", "2",
                                      "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 1 and "sampler.tflite" in result.output
    export.ExportDir(copy, verify=False)  # the explicit opt-out


def test_a_manifest_that_disagrees_with_its_files_is_refused(exports, tmp_path):
    _, out, manifest = exports("ae-gmm")
    copy = _copy(out, tmp_path)
    edited = dict(manifest, image_shape=[4, 10, 10])
    (copy / "manifest.json").write_text(json.dumps(edited))
    from tfvae.errors import RunDirError

    with pytest.raises(RunDirError, match="image_shape"):
        export.ExportDir(copy)
    # Consistent numbers that still do not describe the files: caught when run.
    signatures = json.loads(json.dumps(manifest["signatures"]))
    for entry in (signatures["decode"]["outputs"]["image"],
                  signatures["sample"]["outputs"]["image"], signatures["encode"]["inputs"]["x"]):
        entry["shape"], entry["image_shape"] = [-1, 400], [20, 20, 1]
    edited = dict(manifest, image_shape=[20, 20, 1], input_dim=400, signatures=signatures)
    (copy / "manifest.json").write_text(json.dumps(edited))
    for backend in ("savedmodel", "tflite"):
        with pytest.raises(export.ExportError, match="does not describe these files"):
            export.ExportDir(copy).sample(2, backend=backend)


def test_litert_tensors_carry_their_signature_names(exported):
    from ai_edge_litert.interpreter import Interpreter

    _, out, manifest = exported
    for signature, precisions in manifest["tflite"].items():
        io = manifest["signatures"][signature]
        for name in precisions.values():
            interpreter = Interpreter(model_path=str(out / name))
            assert {d["name"] for d in interpreter.get_input_details()} == set(io["inputs"])
            assert {d["name"] for d in interpreter.get_output_details()} == set(io["outputs"])


def test_a_precision_the_export_lacks_is_refused_with_the_option_that_makes_it(exports):
    _, out, _ = exports("bernoulli")
    exported_dir = export.ExportDir(out)
    assert exported_dir.precisions == ("float32",)
    assert exported_dir.sample(3, seed=1).shape == (3, 784)
    for precision, option in (("int8", "--quantize int8"), ("float16", "--quantize float16")):
        with pytest.raises(export.ExportError, match=f"no {precision} .*{option}"):
            exported_dir.sample(3, seed=1, precision=precision)


@pytest.mark.slow
def test_the_default_precision_is_the_best_the_export_holds(binary_images, tmp_path):
    model = tiny_model("bernoulli", binary_images)
    small = tmp_path / "int8-only"
    export.export(model, small, formats="tflite", precisions="int8")
    exported_dir = export.ExportDir(small)
    assert exported_dir.precisions == ("int8",)
    assert exported_dir.sample(3, seed=1).shape == (3, 784)
    with pytest.raises(export.ExportError, match="--quantize none"):
        exported_dir.sample(3, seed=1, precision="float32")


def test_litert_model_calls_return_fresh_arrays_and_check_their_inputs(exports):
    """Each call's outputs outlive the next call; the batch size may change; names are checked."""
    model, out, _ = exports("gaussian")
    lite = export.LiteRTModel(out / export.tflite_name("decode", "float32"), num_threads=1)
    (name,) = lite.inputs
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))  # float64 on purpose
    first = lite(**{name: z1})
    kept = {k: v.copy() for k, v in first.items()}
    second = lite(**{name: z2})  # another batch size: the input is resized
    for k in first:
        np.testing.assert_array_equal(first[k], kept[k])
        assert second[k].shape[0] == 5
    wanted = model.decode_mean(z2.astype(np.float32)).numpy()
    np.testing.assert_allclose(next(iter(second.values())), wanted, atol=1e-5)
    with pytest.raises(export.ExportError, match="takes inputs"):
        lite(wrong=z1)
