"""`archaudit.reference` is a contract (DESIGN.md): the image reference grammar, from the core."""

from archaudit.core.reference import *  # noqa: F403
from archaudit.core.reference import __all__ as __all__
