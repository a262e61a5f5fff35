"""Named search spaces, one module each. Importing this package registers them all: a new
module in this folder whose function carries ``@register_space`` appears in
``tune.py --list-spaces`` with no other change."""

import importlib
import pkgutil

from search_spaces._pins import PinError, Suggest, show_value
from search_spaces._registry import (
    ArmDefineByRun,
    ArmSurvey,
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
    "ArmSurvey",
    "PinError",
    "Suggest",
    "get_space",
    "list_spaces",
    "register_space",
    "show_value",
]


for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
