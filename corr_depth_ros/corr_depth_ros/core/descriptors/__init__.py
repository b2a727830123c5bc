"""Dense object descriptors (Dense Object Nets, Florence et al., CoRL 2018): network, loss,
matching, grasp poses from depth, persisted references, training and evaluation."""
import os

DEFAULT_WEIGHTS = 'descriptors_don_small.safetensors'
# match_threshold of correspondence_node and process-bag's --match-threshold (descriptor L2).
MATCH_THRESHOLD_RANGE = (0.0, 10.0)
# The heatmap's exp(-distance / sigma), descriptor units: correspondence_node's heatmap_sigma
# default and process-bag's heatmap (not an option there).
HEATMAP_SIGMA = 0.25


def default_weights_path() -> str:
    """Path of the shipped descriptor weights (inside the installed package)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'weights',
                        DEFAULT_WEIGHTS)
