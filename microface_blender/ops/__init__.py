"""Blender's user interface to the add-on: operators, panels and preferences. Imports ``core`` and
``scene``; ``microface_blender/__init__.py`` registers the classes."""
