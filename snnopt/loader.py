"""Load a user's model factory given as ``path/to/file.py:function`` and call it the way
``snnopt train`` and ``snnopt export`` do."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

from torch import nn


def load_factory(spec: str) -> Callable:
    """The callable ``function`` defined in ``file.py`` for ``spec = "file.py:function"``.

    Raises ``ValueError`` naming the file or the function when either is missing (for a
    ``file.py`` given without ``:function``, with the functions it defines), and reports an
    exception raised while the file is imported with the file's name."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        path = Path(spec.rstrip(":"))
        if path.suffix != ".py" or not path.is_file():
            raise ValueError(f"expected FILE.py:FUNCTION, got {spec!r}")
        module = _import(path, str(path))
        defined = _callables(module)
        functions = [n for n in defined if inspect.isfunction(getattr(module, n))]
        example = f"{path}:{(functions or defined or ['make'])[0]}"
        raise ValueError(f"{spec!r} names the model file but not the function that builds the model: give "
                         f"FILE.py:FUNCTION, e.g. {example} (it defines: {', '.join(defined) or 'nothing'})")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"model file {path_text!r} does not exist")
    module = _import(path, path_text)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{path_text!r} defines no function {name!r}; it defines: "
                         f"{', '.join(_callables(module)) or 'nothing'}")
    return factory


def _import(path: Path, path_text: str):
    """The module of the Python file ``path`` (``path_text`` as the user gave it, for errors)."""
    module_name = f"_snnopt_user_{path.stem}_{abs(hash(path.resolve()))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ValueError(f"cannot import {path_text!r} as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ValueError(f"importing {path_text!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _callables(module) -> list[str]:
    """The public callables ``module`` defines itself (not those it imports)."""
    return sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                  and getattr(v, "__module__", None) == module.__name__)


def call_factory(spec: str, factory, input_shape: tuple, n_classes: int) -> nn.Module:
    """``factory(input_shape, n_classes)``, or ``factory()`` when its signature takes no
    arguments; a signature that takes neither, an exception inside the factory or a result
    that is not a module is a ``ValueError`` naming ``spec`` and the calling convention."""
    name = spec.rpartition(":")[2]
    args = factory_arguments(factory, input_shape, n_classes)
    if args is None:
        raise ValueError(f"cannot build the model {spec}: {name}{inspect.signature(factory)} cannot be called the "
                         f"way snnopt calls a model factory, {name}(input_shape, n_classes) (here "
                         f"{name}({input_shape}, {n_classes}), input_shape being one sample's frame) or {name}() "
                         f"without arguments")
    try:
        model = factory(*args)
    except Exception as exc:  # the user's code: report it with the call that failed
        call = f"{name}({', '.join(map(repr, args))})"
        raise ValueError(f"cannot build the model {spec}: {call} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"cannot build the model {spec}: {name} returned {type(model).__name__}, not an nn.Module")
    return model


def factory_arguments(factory, input_shape: tuple, n_classes: int) -> tuple | None:
    """The arguments ``factory``'s signature accepts: ``(input_shape, n_classes)`` when it
    can take them, else ``()`` when it can be called without any; ``None`` when neither."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): assume the documented one
        return input_shape, n_classes
    for args in ((input_shape, n_classes), ()):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return args
    return None
