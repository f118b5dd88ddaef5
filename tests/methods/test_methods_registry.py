"""Every module under ``darkknowledge.methods`` is imported by the package and every method class
it defines is registered (and so reached by the contract suite, which runs over the registry)."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
from typing import ClassVar

import darkknowledge.methods as package
from darkknowledge.methods import Method, methods


def _method_classes(module: types.ModuleType) -> list[type]:
    """Classes defined in ``module`` that follow the method contract (a ``needs_teacher`` flag, a
    ``needs_labels`` method, callable), the base class :class:`Method` itself excepted."""
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and obj.__module__ == module.__name__
        and obj is not Method
        and hasattr(obj, "needs_teacher")
        and callable(getattr(obj, "needs_labels", None))
        and callable(obj)
    ]


def _unregistered(modules: list[types.ModuleType]) -> list[str]:
    registered = {methods.get(n) for n in methods.names()}
    return [
        f"{m.__name__}.{c.__name__}"
        for m in modules
        for c in _method_classes(m)
        if c not in registered
    ]


def _package_modules() -> list[types.ModuleType]:
    return [
        importlib.import_module(f"{package.__name__}.{info.name}")
        for info in pkgutil.iter_modules(package.__path__)
    ]


def _not_imported(name: str, path: list[str], extra_path: str = "") -> list[str]:
    """The modules of package ``name`` (folder ``path``) that ``import name`` does not load, as a
    fresh interpreter sees it."""
    import os
    import subprocess
    import sys

    names = [info.name for info in pkgutil.iter_modules(path)]
    loaded = f"' '.join(n for n in {names!r} if '{name}.' + n not in sys.modules)"
    code = f"import sys, {name}; print({loaded})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, *sys.path) if p)}
    command = [sys.executable, "-c", code]
    run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return run.stdout.split()


def test_every_module_under_methods_is_imported_by_the_package():
    missing = _not_imported(package.__name__, package.__path__)
    assert missing == [], (
        f"add `from darkknowledge.methods.{missing[0] if missing else ''} import ...` to "
        "methods/__init__.py"
    )


def test_the_import_check_names_a_method_file_the_package_forgets(tmp_path):
    pkg = tmp_path / "probe_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from probe_methods.kept import Kept\n")
    (pkg / "kept.py").write_text("class Kept:\n    pass\n")
    (pkg / "forgotten.py").write_text("class Forgotten:\n    pass\n")
    assert _not_imported("probe_methods", [str(pkg)], str(tmp_path)) == ["forgotten"]


def test_every_method_class_under_methods_is_registered():
    modules = _package_modules()
    assert sum(len(_method_classes(m)) for m in modules) >= 3  # the check sees the built-in methods
    assert _unregistered(modules) == []


def test_the_check_fails_for_a_method_that_is_not_registered():
    module = types.ModuleType("darkknowledge.methods.forgotten")

    @dataclasses.dataclass(frozen=True)
    class Forgotten(Method):
        needs_teacher: ClassVar[bool] = True

        def __call__(self, batch):
            raise NotImplementedError

    Forgotten.__module__ = module.__name__
    module.Forgotten = Forgotten
    assert _unregistered([module]) == ["darkknowledge.methods.forgotten.Forgotten"]


def test_the_missing_labels_advice_fits_the_method():
    import pytest

    from darkknowledge.errors import DKError
    from darkknowledge.methods import build_method
    from darkknowledge.methods.base import require_labels

    with pytest.raises(DKError, match="set hard_weight=0"):
        require_labels(build_method("soft_targets", {"hard_weight": 0.5}), None)
    with pytest.raises(DKError) as hard:
        require_labels(build_method("hard_targets"), None)
    assert "hard_weight" not in str(hard.value) and "labelled transfer set" in str(hard.value)
    # decoupled splits its loss at the true class: hard_weight=0 would not free it from labels
    with pytest.raises(DKError) as split:
        require_labels(build_method("decoupled"), None)
    message = str(split.value)
    assert "set hard_weight=0" not in message and "labelled transfer set" in message
