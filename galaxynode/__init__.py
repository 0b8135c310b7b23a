"""galaxynode: a Galaxy Node Pool daemon speaking the Gelato protocol."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `galaxynode.connect(url, key)` without importing trio for every `import galaxynode`.
    if name == "connect":
        from galaxynode.nodeclient import connect
        return connect
    raise AttributeError(f"module 'galaxynode' has no attribute {name!r}")
