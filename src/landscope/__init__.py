"""landscope: does the loss landscape along *your* training trajectory satisfy the conditions the theory assumes?"""

__version__ = "0.1.0"


def __getattr__(name):
    """``from landscope import Recorder`` (and ``recorded_runs``), imported on first use."""
    if name in ("Recorder", "recorded_runs"):
        from landscope.trajectory import record  # keeps torch off `import landscope`

        return getattr(record, name)
    raise AttributeError(f"module 'landscope' has no attribute {name!r}")
