"""The result file reader, ``backend/contract/result.py``, whichever way the add-on runs."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path


def result_module():
    """The module ``backend/contract/result.py`` (numpy only): ``read_result``, ``ResultError``, ..."""
    name = f"{__package__}.result"
    if name in sys.modules:
        return sys.modules[name]
    if importlib.util.find_spec(name) is not None:  # the packed extension
        return importlib.import_module(name)
    # Dev tree: `build.py pack` copies backend/contract/result.py into the zip as core/result.py; here the
    # repo's file is loaded by path, so the one reader is never duplicated and the backend never imported.
    path = Path(__file__).resolve().parents[2] / "backend" / "contract" / "result.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
