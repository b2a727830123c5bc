"""Output-path checks shared by the command line and the bag writer (no ROS, no heavy imports)."""
import os


def nearest_existing(path: str) -> str:
    """``path`` made absolute, or its nearest ancestor that exists: where a new file or folder
    would be made, and what decides whether it can be."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return existing
