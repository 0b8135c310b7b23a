"""`galaxynode devnet`: a main net, pools and simulated nodes on 127.0.0.1 (not written yet)."""


def add_commands(sub) -> None:
    """Add `devnet` to the `galaxynode` subcommand parser."""
