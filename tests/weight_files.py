"""Weight files written by tests: Keras legacy HDF5 (via Keras) and torch.save's layouts
without torch, plus the reverse name maps that give reference-named tensors from ours.

Only tests import this.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import h5py
import numpy as np

import zoo

STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
           np.dtype(np.float16): "HalfStorage"}


def save_keras_h5(model, path, *, full_model: bool = False) -> None:
    """Keras' own legacy HDF5 writer: weights-only (``layer_names`` at the root) or full model."""
    from keras.src.legacy.saving import legacy_h5_format

    if full_model:
        legacy_h5_format.save_model_to_hdf5(model, str(path), include_optimizer=False)
        return
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def save_keras1_h5(layers: dict[str, dict[str, np.ndarray]], path) -> None:
    """A weights-only file with Keras 1 names ('block1_conv1_W_1:0'), as the VGG files have."""
    k1 = {"kernel": "W", "bias": "b", "moving_variance": "running_std",
          "moving_mean": "running_mean"}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weights in layers.items():
            g = f.create_group(layer)
            names = [f"{layer}_{k1.get(w, w)}_1:0" for w in weights]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, v in zip(names, weights.values(), strict=True):
                g[n] = v


def random_variables(name: str, seed: int = 0, **model_kwargs):
    """Random variables of a zoo model at its default input size, without compiling it."""
    import jax

    model, size = zoo.create(name, **model_kwargs), zoo.spec(name).input_size
    x = jax.ShapeDtypeStruct((1, size, size, getattr(model, "in_channels", 3)), np.float32)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def save_keras_h5_from_ours(name: str, variables, path, **model_kwargs) -> None:
    """A Keras 2 weights-only file ('conv1_conv/kernel:0') from our variables, no Keras."""
    model = zoo.create(name, **model_kwargs)
    params, stats = variables["params"], variables.get("batch_stats", {})
    layers = {}
    for layer, path_ in zoo.spec(name).keras_names(model).items():
        p, st = params, stats
        for part in path_.split("/"):
            p, st = p.get(part, {}), st.get(part, {})
        if not p:
            continue
        bn = {"kernel": "kernel", "bias": "beta", "scale": "gamma"}
        names = bn if st else {"kernel": "kernel", "bias": "bias"}
        layers[layer] = {names[k]: np.asarray(v) for k, v in p.items()}
        layers[layer] |= {f"moving_{'mean' if k == 'mean' else 'variance'}": np.asarray(v)
                          for k, v in st.items()}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for layer, weights in layers.items():
            g = f.create_group(layer)
            g.attrs["weight_names"] = [f"{layer}/{w}:0".encode() for w in weights]
            for w, v in weights.items():
                g[f"{layer}/{w}:0"] = v


def torch_state_from_ours(name: str, variables, **model_kwargs) -> dict[str, np.ndarray]:
    """Our variables -> the torchvision state dict they came from (inverse name map, OIHW)."""
    model = zoo.create(name, **model_kwargs)
    inverse = {path: module for module, path in zoo.spec(name).torch_names(model).items()}
    out = {}
    for path, module in inverse.items():
        params = variables["params"]
        for part in path.split("/"):
            params = params.get(part, {})
        stats = variables.get("batch_stats", {})
        for part in path.split("/"):
            stats = stats.get(part, {})
        for var, value in params.items():
            value = np.asarray(value)
            if var == "kernel":
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            out[f"{module}.{'weight' if var in ('kernel', 'scale') else 'bias'}"] = value
        for var, value in stats.items():
            out[f"{module}.running_{var}"] = np.asarray(value)
        if stats:
            out[f"{module}.num_batches_tracked"] = np.array(0, np.int64)
    return out


def torch_pickle(state: dict[str, np.ndarray]) -> tuple[bytes, dict[str, bytes]]:
    """The data.pkl torch.save writes for a state dict, opcode by opcode, and its storages."""
    buf = io.BytesIO()
    w = buf.write

    def glob(module, name):
        w(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def text(s):
        b = s.encode()
        w(pickle.BINUNICODE + struct.pack("<I", len(b)) + b)

    def ints(values):
        w(pickle.MARK)
        for v in values:
            w(pickle.BININT + struct.pack("<i", v))
        w(pickle.TUPLE)

    w(pickle.PROTO + b"\x02")
    glob("collections", "OrderedDict")
    w(pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK)
    storages = {}
    for i, (key, a) in enumerate(state.items()):
        a = np.ascontiguousarray(a)
        text(key)
        glob("torch._utils", "_rebuild_tensor_v2")
        w(pickle.MARK + pickle.MARK)
        text("storage")
        glob("torch", STORAGE[a.dtype])
        text(str(i))
        text("cpu")
        w(pickle.BININT + struct.pack("<i", a.size) + pickle.TUPLE + pickle.BINPERSID)
        w(pickle.BININT + struct.pack("<i", 0))
        ints(a.shape)
        ints([s // a.itemsize for s in a.strides])
        w(pickle.NEWFALSE)
        glob("collections", "OrderedDict")
        w(pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.TUPLE + pickle.REDUCE)
        storages[str(i)] = a.astype(a.dtype.newbyteorder("<")).tobytes()
    w(pickle.SETITEMS + pickle.STOP)
    return buf.getvalue(), storages


def save_torch_zip(state: dict[str, np.ndarray], path, *, pkl: bytes | None = None) -> None:
    """torch.save's zip layout (archive/data.pkl, archive/data/<key>, ...) without torch."""
    data, storages = torch_pickle(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl if pkl is not None else data)
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
        z.writestr("archive/version", "3\n")


class Evil:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))
