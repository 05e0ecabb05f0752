"""The learned modules and what runs them: the Dynamic-Encoded Module, the graph-convolution mesh
deformation, the network and its weights, applying it to a clip, and the photometric stage."""
