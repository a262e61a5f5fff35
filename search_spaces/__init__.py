"""Named search spaces, one module each. Importing this package registers them all."""

from search_spaces import focal  # noqa: F401  (registers the space)
from search_spaces._registry import (
    ArmDefineByRun,
    SearchSpace,
    SpaceContext,
    SpaceError,
    get_space,
    list_spaces,
    register_space,
)

__all__ = [
    "SearchSpace",
    "SpaceContext",
    "SpaceError",
    "ArmDefineByRun",
    "get_space",
    "list_spaces",
    "register_space",
]
