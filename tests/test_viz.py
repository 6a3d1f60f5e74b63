"""Architecture drawings: tracer, graph views, DOT, rendering, summary, policies, CLI.

Regenerate the golden DOT after an intended change with
``UPDATE_GOLDEN=1 pytest tests/test_viz.py -k golden`` and review the diff.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from conftest import traced_params
from flax import linen as nn

import viz
import zoo
import zoo.summary
from tests.cli import run_script

GOLDEN = Path(__file__).parent / "data" / "viz_tiny.dot"
TINY_SHAPE = (1, 8, 8, 3)


class TinyBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return x + y


class Tiny(nn.Module):
    """Stem, two identical residual blocks, a concatenation of two branches, a head."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(4, (3, 3), name="stem")(x)
        x = TinyBlock(name="block1")(x)
        x = TinyBlock(name="block2")(x)
        a = nn.Conv(2, (1, 1), name="branch")(x)
        b = nn.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        x = jnp.concatenate([a, b], axis=-1).mean(axis=(1, 2))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(3, name="head")(x)


@functools.cache
def traced(name: str) -> viz.Graph:
    return viz.trace(name)


def tiny() -> viz.Graph:
    return viz.trace(Tiny(), TINY_SHAPE)


def test_golden_dot_tiny():
    text = viz.to_dot(tiny(), trainable=viz.trainable_fn(r"^(block2|head)/"))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_tiny_dataflow():
    g = tiny()
    assert list(g.nodes) == [
        "input", "stem", "block1/conv", "block1/relu", "block1/add", "block2/conv",
        "block2/relu", "block2/add", "branch", "max_pool", "concatenate", "mean",
        "Dropout_0", "head", "output",
    ]
    edges = {(e.src, e.dst) for e in g.edges}
    assert ("stem", "block1/add") in edges  # the residual shortcut is a real edge
    assert {("branch", "concatenate"), ("max_pool", "concatenate")} <= edges
    assert g.count("add", min_inputs=2) == 2 and g.count("concatenate", min_inputs=2) == 1
    assert g.nodes["stem"].params == 4 * 27 + 4 and g.nodes["stem"].kind == "module"
    assert g.nodes["concatenate"].shapes == ((1, 8, 8, 6),)
    assert g.nodes["stem"].flops == 2 * 8 * 8 * 4 * 27
    assert not g.disconnected()


def test_collapse_keeps_edges_between_modules():
    g = viz.collapse(tiny(), 1)
    assert list(g.nodes)[:4] == ["input", "stem", "block1", "block2"]
    assert g.nodes["block1"].layers == 3 and g.nodes["block1"].type == "TinyBlock"
    into_block2 = [e for e in g.edges if e.dst == "block2"]
    assert len(into_block2) == 1 and into_block2[0].src == "block1"  # one tensor, two uses
    assert not g.disconnected()
    with pytest.raises(ValueError, match="depth"):
        viz.collapse(tiny(), 0)


def test_fold_repeated_blocks():
    g = viz.fold(tiny())
    assert "block2/conv" not in g.nodes and g.modules[("block1",)].repeat == 2
    assert ("block1/add", "branch") in {(e.src, e.dst) for e in g.edges}
    assert not g.disconnected()
    text = viz.to_dot(viz.collapse(g, 1))
    assert "block1 … block2 ×2 : TinyBlock" in text


def test_resnet50_structure():
    g = traced("resnet50")
    assert g.count("add", min_inputs=2) == 16  # Keras ResNet50: 16 Add layers
    assert sum(n.type == "Conv" for n in g.nodes.values()) == 53
    assert not g.disconnected()
    top = viz.collapse(g, 1)
    assert list(top.nodes) == ["input", "stem", "stage1", "stage2", "stage3", "stage4",
                               "global_avg_pool", "head", "output"]
    assert top.nodes["stage1"].shapes == ((1, 56, 56, 256),)
    folded = viz.collapse(viz.fold(g), 2)
    assert folded.nodes["stage3/block2"].repeat == 5 and "stage3/block3" not in folded.nodes


def _needs(name: str):
    if name not in zoo.list_models():
        pytest.skip(f"{name} is not registered yet; this structural test runs once it is")


def test_densenet121_concatenations():
    _needs("densenet121")
    g = traced("densenet121")
    assert g.count("concatenate", min_inputs=2) == 58  # Keras: 58 Concatenate layers
    # Keras: 3 AveragePooling2D, 1 MaxPooling2D, 1 GlobalAveragePooling2D; each transition's
    # pool is one node whatever primitives the backend computes it with
    assert [g.count(t) for t in ("avg_pool", "max_pool", "global_avg_pool")] == [3, 1, 1]
    assert g.nodes["stage1/transition/avg_pool"].shapes == ((1, 28, 28, 128),)
    assert g.count("add") == 0
    assert not g.disconnected()


def test_inception_v3_concatenations():
    _needs("inception_v3")
    g = traced("inception_v3")
    assert g.count("concatenate", min_inputs=2) == 15  # Keras: 15 (11 blocks, 4 inner)
    assert sum(n.type == "Conv" for n in g.nodes.values()) == 94
    assert not g.disconnected()


@pytest.mark.parametrize("name", traced_params())
def test_every_model_draws(name):
    g = traced(name)
    assert not g.disconnected(), f"{name}: nodes off the input->output path"
    assert sum(n.kind == "module" for n in g.nodes.values()) > 1
    for view in (g, viz.collapse(g, 1)):
        assert not view.disconnected()
        text = viz.to_dot(view)
        assert all(f'"{i}" [' in text for i in view.nodes)
    params = sum(sum(v.values()) for v in g.variables.values())
    spec = zoo.spec(name)
    if spec.counts_batch_stats:  # Keras and Darknet count BN statistics
        assert params == spec.reference_params
    else:
        assert sum(g.variables["params"].values()) == spec.reference_params


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
def test_render_svg_parses(tmp_path):
    src = viz.draw("squeezenet1_1", depth=1, freeze="frozen", out=tmp_path / "sq.svg")
    root = ET.parse(tmp_path / "sq.svg").getroot()
    assert root.tag.endswith("svg") and (tmp_path / "sq.dot").read_text() == src.source
    assert "image/svg+xml" in src._repr_mimebundle_()  # what Jupyter displays inline
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {"stem", "fire9", "head"} <= titles


def test_render_without_dot(tmp_path, monkeypatch):
    monkeypatch.setattr(viz.dot.shutil, "which", lambda _: None)
    with pytest.raises(viz.GraphvizNotFound, match="apt-get install graphviz"):
        viz.draw(Tiny(), input_shape=TINY_SHAPE, out=tmp_path / "tiny.png")
    assert (tmp_path / "tiny.dot").read_text().startswith('digraph "Tiny"')
    assert viz.render("digraph {}", tmp_path / "x", "dot") == tmp_path / "x.dot"


def test_freeze_colours():
    frozen, trainable, mixed = (viz.dot.COLORS[k] for k in ("frozen", "trainable", "mixed"))

    def fill(text: str, node: str) -> str:
        return re.search(rf'^  "{node}" \[.*fillcolor="([^"]+)"', text, re.M).group(1)

    text = viz.draw(traced("resnet50"), depth=1, freeze="finetune:1", spec="resnet50").source
    assert fill(text, "stage3") == frozen and fill(text, "stage4") == trainable
    assert fill(text, "head") == trainable
    text = viz.draw(traced("resnet50"), depth=1, freeze=r"stage2/block1/").source
    assert fill(text, "stage2") == mixed and fill(text, "stage1") == frozen


def test_policies():
    spec = zoo.spec("resnet50")
    frozen = viz.trainable_fn("frozen", "resnet50")
    assert frozen("head/kernel") and not frozen("stage4/block3/conv3/kernel")
    top2 = viz.trainable_fn("finetune:2", spec)
    assert top2("stage3/block1/conv1/kernel") and not top2("stage2/block1/conv1/kernel")
    assert viz.trainable_fn("full", spec)("stem/conv/kernel")
    groups = viz.trainable_fn(["stage1", "head"], spec)
    assert groups("stage1/block1/conv1/bias") and not groups("stem/conv/kernel")
    assert viz.trainable_fn(r"conv1/")("stage1/block1/conv1/kernel")
    assert viz.trainable_fn(r"regex:conv1/")("stage1/block1/conv1/kernel")
    assert viz.trainable_fn(None)("anything")
    for bad, msg in (("finetune:9", "groups below the head"), ("finetune:x", "unknown policy"),
                     (["stage9"], "unknown groups")):
        with pytest.raises(ValueError, match=msg):
            viz.trainable_fn(bad, spec)
    with pytest.raises(ValueError, match="regex"):
        viz.trainable_fn("frozen")


def test_summary_totals():
    text = viz.summarize(viz.collapse(traced("resnet50"), 1),
                         viz.trainable_fn("frozen", "resnet50"))
    assert "Total params: 25,636,712" in text  # = keras.applications.ResNet50 count_params()
    assert "Trainable params: 2,049,000" in text
    assert re.search(r"^stage4 \(Stage\) .* no +stage3$", text, re.M)
    full = viz.summary(Tiny(), input_shape=TINY_SHAPE)
    assert re.search(r"^block1/add \(add\) +\(None, 8, 8, 4\) +0 +stem, block1/relu$", full,
                     re.M)


def test_cli_model_and_gallery(tmp_path):
    run_script("draw", "--model", "alexnet", "--depth", "1", "--format", "dot",
               "--out", tmp_path / "a.dot")
    assert (tmp_path / "a.dot").read_text().startswith('digraph "alexnet"')
    run_script("draw", "--all", "--pattern", "^squeezenet", "--format", "dot", "--fold",
               "--out", tmp_path / "g")
    index = (tmp_path / "g" / "index.md").read_text()
    assert "[full depth](squeezenet1_0.full.dot)" in index
    assert (tmp_path / "g" / "squeezenet1_1.depth1.dot").exists()
    # the interactive pages beside the drawings, in index.md and index.html
    assert "[interactive](squeezenet1_0.html)" in index
    assert '<a href="squeezenet1_1.html">interactive</a>' in (
        tmp_path / "g" / "index.html").read_text()
    assert '"name":"squeezenet1_1"' in (tmp_path / "g" / "squeezenet1_1.html").read_text()
    both = run_script("draw", "--model", "alexnet", "--all", "--out", tmp_path / "x", check=False)
    assert both.returncode == 2 and "give one of --model NAME or --all" in both.stderr
    assert "Traceback" not in both.stderr


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.gelu(nn.Dense(4, name="fc")(x))

    @nn.compact
    def features(self, x):
        return jax.nn.silu(nn.Dense(4, name="fc2")(x))


class MultiOut(nn.Module):
    """Two outputs, a module method, a rematerialised module and a jax.named_scope."""

    @nn.compact
    def __call__(self, x):
        enc = Encoder(name="enc")
        x = enc.features(enc(x))
        x = nn.remat(Encoder)(name="rem")(x)
        with jax.named_scope("upsample"):
            y = jnp.repeat(x, 2, axis=1)
        return x * 2.0, jax.nn.sigmoid(y)


def test_generic_modules():
    g = viz.trace(MultiOut(), (2, 3))
    assert list(g.nodes) == [
        "input", "enc/fc", "enc/gelu", "enc/fc2", "enc/silu", "rem/fc", "rem/gelu",
        "upsample", "mul", "sigmoid", "output_0", "output_1",
    ]
    assert g.nodes["output_1"].shapes == ((2, 8),) and not g.disconnected()
    with pytest.raises(ValueError, match="input_shape"):
        viz.trace(MultiOut())


def test_fold_respects_policy_and_flops_caption():
    g = traced("resnet50")
    plain = viz.collapse(viz.fold(g), 2)
    assert plain.nodes["stage3/block2"].repeat == 5
    split = viz.collapse(viz.fold(g, viz.trainable_fn(r"^stage3/block(5|6)/")), 2)
    assert split.nodes["stage3/block2"].repeat == 3 and split.nodes["stage3/block5"].repeat == 2
    text = viz.to_dot(viz.collapse(g, 1), flops=True, rankdir="LR")
    assert "rankdir=LR" in text and "7.72GFLOPs" in text  # 2 x 3.86 G multiply-adds
    # the drawing's FLOPs are zoo.summary.flops's (the one counter, the benchmark's too)
    assert sum(n.flops for n in g.nodes.values()) == zoo.summary.flops("resnet50")
    with pytest.raises(ValueError, match="rankdir"):
        viz.to_dot(g, rankdir="XY")


class MismatchBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(4, (1, 1), name="conv")(x)
        return x + y  # 8 channels + 4 channels: a shape error


class Mismatch(nn.Module):
    """A stem, then a block that fails with a shape error, then a head never reached."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        x = MismatchBlock(name="block")(x)
        return nn.Dense(2, name="head")(x)


def test_partial_drawing_on_a_shape_error(tmp_path):
    with pytest.raises(viz.TraceError) as info:
        viz.draw(Mismatch(), input_shape=TINY_SHAPE, out=tmp_path / "bad.dot", format="dot")
    message = str(info.value)
    assert "failed while tracing, in block (MismatchBlock)" in message
    assert "incompatible shapes" in message and "bad.dot" in message
    assert "\n" not in message
    g = info.value.graph
    assert g.error[0] == "block" and "incompatible shapes" in g.error[2]
    # everything up to the failing module, the error inside it; nothing after it
    assert list(g.nodes) == ["input", "stem", "relu", "block/conv", "block/error"]
    assert g.nodes["block/error"].kind == "error"
    assert ("relu", "block/error") in {(e.src, e.dst) for e in g.edges}
    assert g.variables["params"] == {"stem/kernel": 216, "stem/bias": 8,
                                     "block/conv/kernel": 32, "block/conv/bias": 4}
    text = (tmp_path / "bad.dot").read_text()
    assert '"block/error" [label="failed in block : MismatchBlock' in text
    assert 'shape="octagon"' in text and "PARTIAL: tracing failed in block" in text
    assert '"head"' not in text
    # the collapsed view keeps the error as a node of its own
    top = viz.collapse(g, 1)
    assert list(top.nodes) == ["input", "stem", "relu", "block", "error"]
    assert top.nodes["error"].kind == "error"


def test_cli_partial_drawing_exits_with_one_line(tmp_path):
    proc = run_script("draw", "--model", "resnet50", "--input_shape", "64,64,1",
                      "--format", "dot", "--out", tmp_path / "r.dot", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "resnet50 failed while tracing" in lines[0] and "3-channel input" in lines[0]
    assert "r.dot" in lines[0]
    text = (tmp_path / "r.dot").read_text()
    assert 'shape="octagon"' in text and '"input" ->' in text
    bad = run_script("draw", "--model", "resnet50", "--input_shape", "64,x,3",
                     "--out", tmp_path / "s.dot", check=False)
    assert bad.returncode == 2 and "--input_shape takes integers" in bad.stderr


# Keras layer class -> the drawn node types it is counted against
KERAS_KINDS = {
    "conv": ({"Conv2D", "DepthwiseConv2D", "SeparableConv2D"},
             {"Conv", "DepthwiseConv", "SeparableConv"}),
    # InceptionResNetV2's scaled residual (x + scale * r) is Keras' CustomScaleLayer
    "add": ({"Add", "CustomScaleLayer"}, {"add"}),
    "concatenate": ({"Concatenate"}, {"concatenate"}),
    "max_pool": ({"MaxPooling2D"}, {"max_pool"}),
    "avg_pool": ({"AveragePooling2D"}, {"avg_pool"}),
    "global_avg_pool": ({"GlobalAveragePooling2D"}, {"global_avg_pool"}),
    "global_max_pool": ({"GlobalMaxPooling2D"}, {"global_max_pool"}),
}


def _keras_referenced() -> list[str]:
    return [n for n in zoo.list_models()
            if re.fullmatch(r"keras\.applications\.\w+", zoo.spec(n).reference_name or "")]


@pytest.mark.slow
@pytest.mark.parametrize("name", _keras_referenced())
def test_drawn_layers_match_keras(name):
    """Each Keras layer is one drawn node: convolution, Add, Concatenate and pooling counts
    of the full-depth drawing equal the keras.applications model's."""
    from tests.reference import keras_model

    layers = [type(x).__name__ for x in
              keras_model(name)._flatten_layers(include_self=False, recursive=True)]
    g = traced(name)
    inc = g.predecessors()
    drawn = [n.type for n in g.nodes.values() if n.type != "add" or len(inc[n.id]) >= 2]
    got = {k: sum(t in ours for t in drawn) for k, (_, ours) in KERAS_KINDS.items()}
    want = {k: sum(t in ref for t in layers) for k, (ref, _) in KERAS_KINDS.items()}
    assert got == want


# torchvision module class -> drawn node types (additions and concatenations are functional
# calls in torchvision, not modules: convolution, pooling and linear layers are counted)
TORCH_KINDS = {
    "conv": ({"Conv2d"}, {"Conv", "DepthwiseConv", "SeparableConv"}),
    "max_pool": ({"MaxPool2d"}, {"max_pool"}),
    "avg_pool": ({"AvgPool2d"}, {"avg_pool"}),
    # AdaptiveAvgPool2d(1) is a global average pool; AlexNet's (6) stays adaptive
    "adaptive_avg_pool": ({"AdaptiveAvgPool2d"}, {"adaptive_avg_pool", "global_avg_pool"}),
    "linear": ({"Linear"}, {"Dense"}),
}


def _torch_referenced() -> list[str]:
    return [n for n in zoo.list_models()
            if re.fullmatch(r"torchvision\.models\.\w+", zoo.spec(n).reference_name or "")]


@pytest.mark.slow
@pytest.mark.parametrize("name", _torch_referenced())
def test_drawn_layers_match_torchvision(name):
    """Each torchvision layer module is one drawn node (convolutions, pooling, linear)."""
    from tests.reference import HAVE_TORCH, torch_model

    if not HAVE_TORCH:
        pytest.skip("torch/torchvision are not installed (pip install -e '.[parity]')")
    modules = [type(m).__name__ for m in torch_model(name).modules()]
    drawn = [n.type for n in traced(name).nodes.values()]
    got = {k: sum(t in ours for t in drawn) for k, (_, ours) in TORCH_KINDS.items()}
    want = {k: sum(t in ref for t in modules) for k, (ref, _) in TORCH_KINDS.items()}
    assert got == want
