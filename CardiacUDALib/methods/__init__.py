"""Adaptation methods, one file each, all behind :class:`~CardiacUDALib.methods.base.AdaptationMethod`.

Importing this package registers every method; ``get_method(key)`` returns its class.
"""

from CardiacUDALib.methods import (  # noqa: F401  (importing registers the methods)
    adabn,
    cisfa,
    cmevae,
    cut_seg,
    gin_ipa,
    pnp_adanet,
    self_training,
    slaug,
    source_only,
    uda_vae_pp,
    varda,
)
from CardiacUDALib.methods.base import AdaptationMethod, MethodConfig, build_config
from CardiacUDALib.methods.registry import METHODS, get_method, register_method

__all__ = [
    "METHODS",
    "AdaptationMethod",
    "MethodConfig",
    "build_config",
    "get_method",
    "register_method",
]
