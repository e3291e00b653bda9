"""`archaudit.platforms` is a contract (DESIGN.md): platforms and the runtimes' rules, from the core."""

from archaudit.core.platforms import *  # noqa: F403
from archaudit.core.platforms import __all__ as __all__
