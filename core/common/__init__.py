"""Building blocks shared by the core's modules: the generic registry and typed options."""

from core.common.options import Option, option, options_of, validate_options
from core.common.registry import Registry, declared_options

__all__ = ["Option", "Registry", "declared_options", "option", "options_of", "validate_options"]
