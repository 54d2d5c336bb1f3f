"""Architectures, one file each; importing this package registers them all."""

from lit_models.archs import (
    gpt,  # noqa: F401  (registers "gpt")
    indra,  # noqa: F401  (registers "indra")
    qtg,  # noqa: F401  (registers "qtg")
)
from lit_models.archs.registry import ARCHITECTURES, build_arch, make_config, register

__all__ = ["ARCHITECTURES", "build_arch", "make_config", "register"]
