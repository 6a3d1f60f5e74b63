"""The backend: how the zoo's layers are computed on each platform.

Model files never import this package: they use :mod:`zoo.layers`, whose layers hand their
computation here. Everything platform-specific lives below: the formulations of each
convolution and pooling per platform (:mod:`zoo.backend.conv`), the native CPU kernels
(:mod:`zoo.backend.native`), the XLA compiler options, and the settings that steer them.
"""
