"""What the backend and the Blender add-on agree on: the result file (``result.py``: arrays,
units, region names) and writing files whole (``atomic.py``). numpy and the standard library
only; ``build.py pack`` copies ``result.py`` into the extension, so there is one reader."""
