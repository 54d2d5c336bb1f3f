"""Architectures, one file each; importing this package registers them all."""

from lit_models.archs import (
    fractal,  # noqa: F401  (registers "fractal" in COORDINATE_ARCHITECTURES)
    gpt,  # noqa: F401  (registers "gpt")
    indra,  # noqa: F401  (registers "indra")
    qtg,  # noqa: F401  (registers "qtg")
)
from lit_models.archs.registry import (
    ARCHITECTURES,
    COORDINATE_ARCHITECTURES,
    TeacherSignal,
    build_arch,
    make_config,
    register,
)

__all__ = ["ARCHITECTURES", "COORDINATE_ARCHITECTURES", "TeacherSignal", "build_arch",
           "make_config", "register"]
