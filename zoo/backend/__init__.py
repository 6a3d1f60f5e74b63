"""The backend: how the zoo's layers are computed on each platform.

Model files never import this package: they use :mod:`zoo.layers`, whose layers hand their
computation to :mod:`zoo.backend.ops`. Everything platform-specific lives here:

- :mod:`zoo.backend.conv`: the formulations of each kind of convolution and pooling
  (XLA's own, matrix products, shifted multiply-adds, Winograd, ...), the table of which
  one each platform gets (``FORMULATIONS``; the platform a function is lowered for, by
  ``lax.platform_dependent``), ``$ZOO_CONV_IMPL`` / :func:`use_impl`;
- :mod:`zoo.backend.native`: the native CPU kernels (C++, XLA FFI), ``$ZOO_NATIVE``;
- :mod:`zoo.backend.fusion`: fusions across layers that the models never see (an inference
  batch norm and its ReLU applied by the depthwise conv or max pool that reads them; a
  DenseNet transition's pool taken before its 1x1 conv);
- :mod:`zoo.backend.norm`: training-mode batch norm with a hand-written gradient;
- :mod:`zoo.backend.prng`: the initial weights' random keys (Philox named on every platform);
- :mod:`zoo.backend.options`: the XLA compiler options (``$ZOO_COMPILER_OPTIONS``), set for
  every ``jax.jit`` of the process when ``zoo`` is imported before JAX starts its CPU
  backend, and passed explicitly by the project's own jits.

The parameter layout never depends on the formulation, so checkpoints move freely between
CPU, GPU and TPU.
"""

from zoo.backend.conv import FORMULATIONS, formulation, use_impl  # noqa: F401
from zoo.backend.options import compiler_options  # noqa: F401
