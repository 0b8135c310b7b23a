"""galaxynode: a Galaxy Node Pool daemon speaking the Gelato protocol."""

__version__ = "0.1.0"
