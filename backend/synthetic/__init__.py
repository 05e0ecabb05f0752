"""Synthetic clips with known micro-expressions: the generator, skin textures, OBJ reading and
result files of the truth. Never imported by the shipped pipeline (tests/test_layout.py)."""
