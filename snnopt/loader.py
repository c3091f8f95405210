"""Load a user's model factory given as ``path/to/file.py:function``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable


def load_factory(spec: str) -> Callable:
    """The callable ``function`` defined in ``file.py`` for ``spec = "file.py:function"``.

    Raises ``ValueError`` naming the file or the function when either is missing, and
    reports an exception raised while the file is imported with the file's name."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise ValueError(f"expected FILE.py:FUNCTION, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"model file {path_text!r} does not exist")
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
    factory = getattr(module, name, None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{path_text!r} defines no function {name!r}; it defines: {', '.join(defined) or 'nothing'}")
    return factory
