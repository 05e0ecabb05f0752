"""What builds Blender data: the importer (rig, head, shape keys, actions), the F-curve writer for
every supported Blender version, and the matched camera. Imports bpy and ``core``, never ``ops``."""
