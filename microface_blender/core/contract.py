"""The backend's contract modules, ``backend/contract/result.py`` (the result file) and
``protocol.py`` (the command line), whichever way the add-on runs."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

PACKED = ("result", "protocol")   # `build.py pack` copies backend/contract/<name>.py to core/<name>.py


def contract_module(name: str):
    """The module ``backend/contract/<name>.py`` (numpy and the standard library only), ``name`` in
    :data:`PACKED`: ``contract_module("result").read_result``, ``contract_module("protocol").decode_event``."""
    if name not in PACKED:
        raise ValueError(f"{name!r} is not a contract module the extension carries ({', '.join(PACKED)})")
    full = f"{__package__}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    if importlib.util.find_spec(full) is not None:  # the packed extension
        return importlib.import_module(full)
    # Dev tree: the repo's file is loaded by path, so the one definition is never duplicated and
    # the backend package is never imported.
    path = Path(__file__).resolve().parents[2] / "backend" / "contract" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(full, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[full]
        raise
    return module
