"""The Gelato conformance suite (not written yet)."""


def add_commands(sub) -> None:
    """Add `conformance` to the `galaxynode` subcommand parser."""
