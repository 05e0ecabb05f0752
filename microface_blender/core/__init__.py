"""What the add-on computes without Blender: numpy and the standard library only, never bpy.

Skinning, the micro-detail basis, frame and strip maps, the rig data and keyframe arithmetic, the
backend as a child process, where the backend lives, and the result file reader. Tested as plain
Python; imports nothing from ``scene``, ``ops`` or ``batch`` (tests/test_layout.py).
"""
