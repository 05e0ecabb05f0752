"""The head model: FLAME loading (allow-listed unpickling), its 8 regions, the camera, the
rasterizer and visibility, and the model's own priors. Used by every other subpackage."""
