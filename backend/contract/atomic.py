"""Writing a file so that a failure never leaves a partial one where readers look.

(``backend/contract/result.py`` keeps its own copy of this logic: it is shipped alone inside the Blender
add-on and may import nothing from the backend.)
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix (writers such as OpenCV and
    np.savez go by the extension). If the block finishes, the file becomes ``path`` with mode 0644
    (mkstemp makes 0600); if it raises, the temporary file is deleted and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
