"""Reference models for parity tests: Keras applications (JAX backend) and torchvision.

Only tests import this. Keras and torch are reference implementations here, never
dependencies of the project.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402

import zoo  # noqa: E402

HAVE_TORCH = (importlib.util.find_spec("torch") is not None
              and importlib.util.find_spec("torchvision") is not None)


def keras_model(name: str, size: int | None = None, *, include_top: bool = True,
                num_classes: int = 1000, pooling: str | None = None):
    """The keras.applications model behind a zoo name, random weights, logits out."""
    import keras

    spec = zoo.spec(name)
    ctor = getattr(keras.applications, spec.reference_name.rsplit(".", 1)[-1])
    size = size or spec.input_size
    kwargs = dict(weights=None, include_top=include_top, pooling=pooling,
                  input_shape=(size, size, 3))
    if include_top:
        kwargs |= dict(classes=num_classes, classifier_activation=None)
    return ctor(**kwargs)


def keras_randomize(model, seed: int = 0) -> None:
    """Give biases and BN statistics random values (Keras initialises them to 0/1)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        name = w.path.rsplit("/", 1)[-1]
        shape = tuple(w.shape)
        if name in ("bias", "beta", "moving_mean"):
            w.assign(rng.normal(0, 0.1, shape).astype("float32"))
        elif name in ("gamma", "moving_variance"):
            w.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))


def keras_layers(model) -> dict[str, dict[str, np.ndarray]]:
    """``{layer_name: {weight_name: array}}`` of a Keras model, as a weights file stores it."""
    out = {}
    for layer in model.layers:
        if layer.weights:
            out[layer.name] = {w.path.rsplit("/", 1)[-1]: np.asarray(w.numpy())
                               for w in layer.weights}
    return out


# Constructor options that make a torchvision model the one a zoo name stands for.
# googlenet: no auxiliary heads (the zoo model's default; torchvision's published 6,624,904
# parameters count none), no transform_input (the zoo model expects already-normalised
# input, see zoo/googlenet.py), and init_weights=True to silence torchvision's warning.
TORCH_OPTIONS = {
    "googlenet": dict(aux_logits=False, transform_input=False, init_weights=True),
}


def torch_model(name: str, *, num_classes: int = 1000, **options):
    """The torchvision model behind a zoo name, with random weights and BN statistics."""
    import torch
    import torchvision

    spec = zoo.spec(name)
    ctor = getattr(torchvision.models, spec.reference_name.rsplit(".", 1)[-1])
    torch.manual_seed(0)
    options = TORCH_OPTIONS.get(name, {}) | options
    model = ctor(weights=None, num_classes=num_classes, **options).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1, generator=gen)
                mod.running_var.uniform_(0.5, 1.5, generator=gen)
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.normal_(0, 0.1, generator=gen)
    return model


def torch_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
