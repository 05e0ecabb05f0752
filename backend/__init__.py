"""MicroFace backend: video -> landmarks -> aligned crops -> optical flow -> FLAME fit -> result file.

Importing this package does no work and imports neither torch nor OpenCV; each stage imports
what it needs when it runs.
"""
__version__ = "0.5.0"
