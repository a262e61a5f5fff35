"""The one registry type, and every registry built on it."""

import pytest

from trainables.errors import UserError
from trainables.registry import Registry


def _registries() -> dict[str, Registry]:
    from analysis.report import SECTIONS
    from search_spaces import _registry as spaces
    from sweep.options import METRICS
    from trainables.backbones._registry import SOURCES
    from trainables.data import DATASETS
    from trainables.losses import LOSSES
    from trainables.optim import OPTIMIZERS
    from trainables.svm import CLASSIFIERS

    return {
        "spaces": spaces.SPACES,
        "datasets": DATASETS,
        "optimizers": OPTIMIZERS,
        "losses": LOSSES,
        "backbone sources": SOURCES,
        "metrics": METRICS,
        "classifiers": CLASSIFIERS,
        "report sections": SECTIONS,
    }


def test_get_names_and_glob():
    registry: Registry[int] = Registry("colour")
    for number, name in enumerate(["red", "green", "grey", "blue"]):
        registry.register(name, number)
    assert registry.get("grey") == 2
    assert registry.names() == ["blue", "green", "grey", "red"]
    assert registry.names("gr*") == ["green", "grey"]
    assert list(registry) == ["red", "green", "grey", "blue"]  # registration order
    assert "red" in registry and "pink" not in registry and len(registry) == 4


def test_an_unknown_name_is_one_user_error_with_close_matches():
    class ColourError(UserError):
        pass

    registry: Registry[int] = Registry("colour", ColourError)
    for name in ("red", "green", "grey"):
        registry.register(name, 0)
    with pytest.raises(ColourError) as caught:
        registry.get("gren")
    assert str(caught.value) == (
        "unknown colour 'gren'; did you mean green, grey? accepted: green, grey, red"
    )
    with pytest.raises(ColourError, match="^unknown colour 'zzz'; accepted: green, grey, red$"):
        registry.get("zzz")


def test_a_decorator_registers_and_returns_the_function():
    registry: Registry[tuple] = Registry("thing")

    @registry.decorator("double", lambda f: ("entry", f))
    def double(x: int) -> int:
        return 2 * x

    assert double(3) == 6 and registry.get("double") == ("entry", double)
    with pytest.raises(ValueError, match="thing 'double' is registered twice"):
        registry.register("double", ())


@pytest.mark.parametrize("which", list(_registries()))
def test_every_registry_refuses_an_unknown_name_with_a_user_error(which):
    registry = _registries()[which]
    assert len(registry) >= 2
    first = registry.names()[0]
    assert registry.get(first) is registry.entries()[list(registry).index(first)]
    with pytest.raises(UserError, match=r"^unknown .* accepted: "):
        registry.get(first + "-no-such-name")
