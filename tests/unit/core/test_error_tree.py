"""One exception tree (reconciler/core/errors.py): every exception class defined under
reconciler/ derives from ReconcilerError and is either permanent or temporary by type,
and the tree drawn in the module docstring names every one of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import reconciler
from reconciler.core import errors
from reconciler.core.errors import (
    EngineStartError,
    EngineStartFailed,
    EngineStartRefused,
    PermanentError,
    ReconcilerError,
    TemporaryError,
)

# the roots and the families that cut across them are not leaves of one retry class
FAMILIES = {"ReconcilerError", "PermanentError", "TemporaryError", "EngineStartError",
            "SourceError"}


def project_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(reconciler.__path__, "reconciler."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI when imported
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == info.name:
                found.append(cls)
    return sorted(set(found), key=lambda c: (c.__module__, c.__name__))


EXCEPTIONS = project_exceptions()


def test_the_walk_finds_the_known_errors() -> None:
    names = {c.__name__ for c in EXCEPTIONS}
    assert {"InvalidDesiredState", "EngineStartRefused", "EngineStartFailed",
            "IllegalTransition", "RayQueryError", "ChatError"} <= names


@pytest.mark.parametrize(
    "cls", [pytest.param(c, id=f"{c.__module__}.{c.__name__}") for c in EXCEPTIONS]
)
def test_every_project_exception_is_in_the_tree(cls: type[BaseException]) -> None:
    assert issubclass(cls, ReconcilerError), f"{cls.__name__} is not under ReconcilerError"
    assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the drawing"
    if cls.__name__ not in FAMILIES:
        permanent = issubclass(cls, PermanentError)
        assert permanent != issubclass(cls, TemporaryError), "exactly one retry class"
        assert cls.retryable is not permanent


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        pytest.param(EngineStartRefused, False, id="refused-start-is-permanent"),
        pytest.param(EngineStartFailed, True, id="failed-start-is-retried"),
    ],
)
def test_engine_start_errors_are_two_types_of_one_family(
    cls: type[EngineStartError], retryable: bool
) -> None:
    err = cls("llama/0/engine: no")
    assert isinstance(err, EngineStartError) and err.retryable is retryable
    assert err.reason == "EngineStartFailed"
