"""Scene repository queries on sparse keypoints (ConDense part 2): index, image -> scene, scene -> scene, text -> scene."""

from pretrain3d.methods.registry import REGISTRY

# Baselines that need no pre-training run (retrieval.sources), then every method that declares query
# features (methods.registry ``query_source``); torch-free, for the CLI and the workflow.
BASELINES = {
    "teacher": "the frozen 2D teacher fused onto the points by multi-view averaging (the no-3D-training baseline)",
}
SOURCES = {**BASELINES, **{name: f"{spec.description} (needs --backbone)"
                           for name, spec in REGISTRY.items() if spec.query_source}}
