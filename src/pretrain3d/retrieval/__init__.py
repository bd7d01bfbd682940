"""Scene repository queries on sparse keypoints (ConDense part 2): index, image -> scene, scene -> scene, text -> scene."""

# Feature sources of an index and its queries (torch-free, for the CLI): name -> what it is.
SOURCES = {
    "condense": "a ConDense run's 3D field (scenes) and jointly trained 2D network (images); needs --backbone",
    "teacher": "the frozen 2D teacher fused onto the points by multi-view averaging (the no-3D-training baseline)",
}
