"""Scene repository queries on sparse keypoints (ConDense part 2): index, image -> scene, scene -> scene, text -> scene."""
