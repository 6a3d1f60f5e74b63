"""Grad-CAM (Selvaraju et al., 2017): where a trained classifier looked.

The class score's gradient with respect to the last feature map (the spec's last feature
tap with a module path), averaged over space, weights that map's channels; the ReLU of
the weighted sum, upsampled to the image and scaled to [0, 1], is the heat map. The map
is caught and perturbed by Flax interception while the whole network runs, so it works
for every zoo classifier and either head without touching the model::

    from train import explain
    maps = explain.explain_files("/tmp/zoo_demo", ["cell1.png"], out_dir="/tmp/cam")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import zoo
from train import data as D
from train import evaluate as E
from train import plots
from train.errors import ImageError, WorkdirError
from train.pipeline import resize


def last_tap(spec: zoo.ModelSpec) -> str | None:
    """The spec's coarsest feature tap when a submodule makes it (Grad-CAM's layer); None
    when that map is the model's own output (``''``: e.g. DenseNet's ``post_bn`` + ReLU),
    then :func:`gradcam` takes the last spatial map a submodule makes."""
    taps = spec.feature_info()
    return taps[-1].module if taps and taps[-1].module else None


def last_spatial_module(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> str:
    """Path of the last submodule call (outside ``head``) whose output is a feature map
    [N, h, w, C] (traced with ``jax.eval_shape``: no computation)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if (context.method_name == "__call__" and path and not path.startswith("head")
                and getattr(out, "ndim", 0) == 4):
            seen.append(path)
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    if not seen:
        raise ValueError(f"{type(model).__name__} makes no feature map in a submodule")
    return seen[-1]


def _at(tap: str, fn):
    """An interceptor applying ``fn`` to the output of the module at path ``tap``."""

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and "/".join(context.module.path) == tap:
            return fn(out)
        return out

    return intercept


def gradcam(model: nn.Module, variables: dict[str, Any], images: jax.Array,
            tap: str | None = None, classes: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(heat maps [N, H, W] in [0, 1], probabilities [N, K])`` for normalised ``images``
    [N, H, W, C] at the submodule ``tap`` (default :func:`last_spatial_module`); the maps
    explain ``classes`` (default: each image's predicted class)."""
    images = jnp.asarray(images)
    tap = tap or last_spatial_module(model, variables, images)
    caught = {}

    def catch(out):
        caught["shape"] = jax.ShapeDtypeStruct(out.shape, jnp.float32)
        return out

    with nn.intercept_methods(_at(tap, catch)):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    if "shape" not in caught:
        raise ValueError(f"{type(model).__name__} has no submodule {tap!r}: give a module path "
                         "of the network (e.g. a feature tap of its ModelSpec)")

    def score(delta, v, x, cls):
        kept = {}

        def add(out):
            kept["a"] = out
            return out + delta.astype(out.dtype)

        with nn.intercept_methods(_at(tap, add)):
            logits = model.apply(v, x, train=False).astype(jnp.float32)
        return jnp.sum(jnp.take_along_axis(logits, cls[:, None], 1)), (kept["a"], logits)

    # the weights and images are arguments, not constants folded into the compiled program
    @jax.jit
    def run(v, x, cls):
        zero = jnp.zeros(caught["shape"].shape, jnp.float32)
        grads, (feats, logits) = jax.grad(score, has_aux=True)(zero, v, x, cls)
        weights = grads.mean(axis=(1, 2), keepdims=True)  # [N, 1, 1, C]
        cam = jax.nn.relu(jnp.sum(weights * feats.astype(jnp.float32), -1))  # [N, h, w]
        cam = jax.image.resize(cam, (cam.shape[0], *images.shape[1:3]), "bilinear")
        top = cam.max(axis=(1, 2), keepdims=True)
        return jnp.where(top > 0, cam / jnp.where(top > 0, top, 1), 0.0), jax.nn.softmax(logits)

    if classes is None:
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
        classes = np.asarray(jnp.argmax(logits, -1))
    cams, probs = run(variables, images, jnp.asarray(classes, jnp.int32))
    return np.asarray(cams), np.asarray(probs)


def _model_of(run: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], Any]:
    from train import model as M

    variables = {"params": run["state"].params, "batch_stats": run["state"].batch_stats}
    spec = zoo.spec(run["config"].model.name)
    return M.build_model(run["config"], len(run["class_names"])), variables, spec


def explain_images(workdir: str, images: Sequence[np.ndarray], *, tap: str | None = None,
                   which: str = "best", run: dict | None = None,
                   classes: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(resized images uint8 [N, S, S, 3], heat maps [N, S, S], probabilities [N, K])``
    of RGB ``images`` under a workdir's checkpoint at the run's image size ``S``; the maps
    explain ``classes`` (default: the predicted ones)."""
    run = run or E.load_run(workdir, which)
    model, variables, spec = _model_of(run)
    if spec.task != "classification":
        raise WorkdirError(f"{workdir} trained a {spec.task} model ({spec.name}): Grad-CAM "
                           "here explains classifiers; give a classification workdir")
    size = run["config"].data.image_size
    shown = np.stack([resize(np.asarray(i), size) for i in images])
    x = spec.normalize(jnp.asarray(shown, jnp.float32))
    cams, probs = gradcam(model, variables, x, tap or last_tap(spec), classes)
    return shown, cams, probs


def explain_files(workdir: str, paths: Sequence[str], out_dir: str | None = None, *,
                  tap: str | None = None, which: str = "best") -> list[dict[str, Any]]:
    """Grad-CAM of each image file: ``{'path', 'class', 'probability', 'overlay'}`` (the
    overlay PNG written into ``out_dir``, default ``<workdir>/explain``), or
    ``{'path', 'error'}`` for a file that cannot be read; plus ``explain/grid.png``."""
    run = E.load_run(workdir, which)
    names = run["class_names"]
    out_dir = out_dir or os.path.join(workdir, "explain")
    os.makedirs(out_dir, exist_ok=True)
    images, results = {}, {}
    for p in paths:
        try:
            images[p] = D.decode_file(p)
        except ImageError as e:
            results[p] = {"path": p, "error": str(e)}
    if images:
        shown, cams, probs = explain_images(workdir, list(images.values()), tap=tap, run=run)
        titles = []
        for p, img, cam, q in zip(images, shown, cams, probs, strict=True):
            k = int(q.argmax())
            out = os.path.join(out_dir, os.path.splitext(os.path.basename(p))[0] + "_cam.png")
            titles.append(f"{os.path.basename(p)}\n{names[k]} {q[k]:.3f}")
            plots.plot_images([img], [titles[-1]], out, overlays=[cam])
            results[p] = {"path": p, "class": names[k], "probability": float(q[k]),
                          "overlay": out}
        plots.plot_images(list(shown), titles, os.path.join(out_dir, "grid.png"),
                          "Grad-CAM", overlays=list(cams))
    return [results[p] for p in paths]


GRID_SIZE = 12  # images in the evaluation's gradcam_<name>.png


def sample_grid(run: dict[str, Any], source: D.Source, indices: np.ndarray,
                probs: np.ndarray, labels: np.ndarray, path: str, n: int = GRID_SIZE,
                seed: int = 0) -> tuple[str | None, Any]:
    """``gradcam_<name>.png`` of an evaluation: Grad-CAM of the predicted class for the
    most confident mistakes (up to half the grid) and a fixed random sample of the other
    images, each titled true / predicted / probability; also a TensorBoard image
    (``<name>/gradcam``). ``(path, matplotlib Figure)``; the path is None when there is no
    image or the model has no layer to explain (said in the log), the figure None on every
    process but the first (they run the model with it; it draws and writes)."""
    from train import metrics

    wrong = list(metrics.confident_mistakes(probs, labels, n // 2))
    rest = np.setdiff1d(np.arange(len(indices)), wrong)
    pick = wrong + list(np.random.default_rng(seed).permutation(rest)[: n - len(wrong)])
    if not pick:
        return None, None
    names = run["class_names"]
    try:
        shown, cams, _ = explain_images("", [source.image(indices[i]) for i in pick],
                                        run=run, classes=probs[pick].argmax(-1))
    except (ValueError, WorkdirError) as e:
        import logging

        logging.getLogger(__name__).warning("no Grad-CAM grid: %s", e)
        return None, None
    titles = [f"true {names[labels[i]]}\npred {names[int(probs[i].argmax())]} "
              f"{probs[i].max():.3f}" for i in pick]
    if jax.process_index() != 0:
        return path, None
    fig = plots.plot_images(list(shown), titles, path, "Grad-CAM of the predicted class "
                            f"({len(wrong)} mistakes first)", overlays=list(cams))
    from train import logs

    stem = os.path.splitext(os.path.basename(path))[0].removeprefix("gradcam_")
    logs.add_figures(os.path.dirname(path), {f"{stem}/gradcam": fig} if fig else {},
                     int(np.asarray(run["state"].step)))
    return path, fig


def report_grid(report: dict[str, Any], run: dict[str, Any], source: D.Source,
                indices: np.ndarray, probs: np.ndarray, labels: np.ndarray, workdir: str,
                name: str) -> None:
    """:func:`sample_grid` of an evaluation report named ``name`` (``test``): writes
    ``<workdir>/gradcam_<name>.png``; ``report['gradcam']`` is its path (None: none drawn)
    and ``report['figures']['gradcam']`` the figure. ``run``: ``config``, ``class_names``
    and ``state`` (its ``params``, ``batch_stats`` and ``step``) of the whole network."""
    path = os.path.join(workdir, f"gradcam_{E.safe_name(name)}.png")
    report["gradcam"], fig = sample_grid(run, source, indices, probs, labels, path)
    if fig is not None:
        report.setdefault("figures", {})["gradcam"] = fig
