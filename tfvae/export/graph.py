"""The exported graphs: a ``tf.Module`` with ``decode``, ``sample`` and ``encode``.

Every graph is plain TensorFlow: each distribution head is replaced by the
deterministic map from its parameters to what a user wants (the head's own
``mean_from_params`` for the decoder, ``export_outputs`` for the encoder).
Samplers take their noise as an input and turn it into codes with the
model's own ``codes_from_noise``, so the graphs hold no random op and the
same noise gives the same images from Keras, the SavedModel and LiteRT.

The module owns copies of the weights as tracked variables (no closure over
the Keras model): a SavedModel whose function captured a Keras model
through a closure once converted to a LiteRT file that had lost its weights.
"""

from __future__ import annotations

from tfvae._keras import keras, tf
from tfvae.networks import count_weights, split_head

#: Meaning of an encoder's output when it has no distribution head (a plain code).
CODE_OUTPUTS = {"code": "deterministic code"}


def clone_body(layers, input_dim: int, name: str):
    """A new Sequential with float32 copies of ``layers`` and their current weights.

    The copies compute in float32 whatever dtype policy the model was built
    under: the weights are float32 under a mixed-precision policy too, and
    the exported signatures take and give float32.
    """
    copies = [type(layer).from_config({**layer.get_config(), "dtype": "float32"})
              for layer in layers]
    net = keras.Sequential([keras.Input(shape=(input_dim,))] + copies, name=name)
    for copy, layer in zip(copies, layers, strict=True):
        copy.set_weights(layer.get_weights())
    return net


def export_module(model):
    """A ``tf.Module`` with the ``decode``, ``sample`` and ``encode`` functions of a model.

    Returns:
      ``(module, info)``: info holds the outputs' meaning, the noise inputs,
      the weight count of each signature and the prior (for the manifest).
    """
    model.check_ready()
    decoder_layers, decoder_head = split_head(model.decoder)
    encoder_layers, encoder_head = split_head(model.encoder)
    latent, dim = int(model.latent_dim), int(model.input_dim)
    noise = model.noise_inputs()
    sampler_params = model.sampler_params()
    stack = [(list(net.layers), int(net.input_shape[-1])) for net in model.sampler_networks]
    codes_from_noise = type(model).codes_from_noise
    encoder_outputs = (CODE_OUTPUTS if encoder_head is None else encoder_head.OUTPUTS)

    def posterior(params):
        return {"code": params} if encoder_head is None else encoder_head.export_outputs(params)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__(name=f"tfvae_{model.model_type.replace('-', '_')}")
            self.decoder_net = clone_body(decoder_layers, latent, "decoder")
            self.encoder_net = clone_body(encoder_layers, dim, "encoder")
            self.stack_nets = [clone_body(layers, size, f"generator_{i + 2}")
                               for i, (layers, size) in enumerate(stack)]
            self.sampler_params = {
                k: tf.Variable(v, trainable=False, name=k) for k, v in sampler_params.items()
            }

        def _decode(self, z):
            return decoder_head.mean_from_params(self.decoder_net(z, training=False))

        @tf.function(input_signature=[tf.TensorSpec([None, latent], tf.float32, name="z")])
        def decode(self, z):
            return {"image": tf.identity(self._decode(z), name="image")}

        @tf.function(input_signature=[
            tf.TensorSpec([None, *n.shape], tf.float32, name=n.name) for n in noise
        ])
        def sample(self, *args):
            params = {k: tf.convert_to_tensor(v) for k, v in self.sampler_params.items()}
            inputs = {n.name: a for n, a in zip(noise, args, strict=True)}
            nets = [lambda h, net=net: net(h, training=False) for net in self.stack_nets]
            z = codes_from_noise(params, inputs, nets)
            return {"image": tf.identity(self._decode(z), name="image")}

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name="x")])
        def encode(self, x):
            outputs = posterior(self.encoder_net(x, training=False))
            return {k: tf.identity(v, name=k) for k, v in outputs.items()}

    module = Exported()
    return module, _info(model, module, decoder_head, encoder_outputs, noise, sampler_params)


def _info(model, module, decoder_head, encoder_outputs, noise, sampler_params) -> dict:
    """What the manifest says of the graphs: meanings, noise, weight counts, prior."""
    decoder_weights = count_weights(module.decoder_net.weights)
    return {
        "image_shape": [int(s) for s in model.image_shape],
        "decoder_meaning": decoder_head.MEAN_MEANING,
        "encoder_outputs": encoder_outputs,
        "noise": noise,
        "weights": {
            "decode": decoder_weights,
            "sample": decoder_weights + count_weights(module.sampler_params.values())
            + sum(count_weights(net.weights) for net in module.stack_nets),
            "encode": count_weights(module.encoder_net.weights),
        },
        "prior": model.prior_description(sampler_params),
    }


def signature_functions(module) -> dict:
    """Concrete functions of the module, keyed by signature name."""
    return {name: getattr(module, name).get_concrete_function()
            for name in ("decode", "sample", "encode")}


def signature_io(module, info) -> dict:
    """Manifest entries for each signature: inputs and outputs with shapes and dtypes."""
    noise = {n.name: n for n in info["noise"]}
    out = {}
    for name, fn in signature_functions(module).items():
        inputs = {}
        for spec in fn.structured_input_signature[0]:
            entry = {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype.name}
            if name == "sample":
                entry["distribution"] = noise[spec.name].distribution
            inputs[spec.name] = entry
        if name == "encode":  # flattened channel-last images
            inputs["x"]["image_shape"] = info["image_shape"]
        outputs = {}
        for key, spec in fn.structured_outputs.items():
            meaning = (info["decoder_meaning"] if name in ("decode", "sample")
                       else info["encoder_outputs"][key])
            outputs[key] = {"shape": [-1, *spec.shape[1:]], "dtype": spec.dtype.name,
                            "meaning": meaning}
            if key == "image":
                outputs[key]["image_shape"] = info["image_shape"]
        out[name] = {"inputs": inputs, "outputs": outputs, "weights": info["weights"][name]}
    return out
