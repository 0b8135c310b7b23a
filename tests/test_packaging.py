"""The wheel's contents are declared by hand in pyproject.toml (packages are listed, because
protocol/ ships inside the package as galaxynode.protocol_data): keep that declaration complete."""
import tomllib
from pathlib import Path

from galaxynode.conformance import vectors

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_directory_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "galaxynode").rglob("__init__.py")}
    listed = set(_setuptools()["packages"])
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == {"galaxynode.protocol_data"}


def test_protocol_data_ships_every_vector_file():
    st = _setuptools()
    source = ROOT / st["package-dir"]["galaxynode.protocol_data"]
    shipped = {p for pattern in st["package-data"]["galaxynode.protocol_data"] for p in source.glob(pattern)}
    assert shipped == set(source.rglob("*.json")) and len(shipped) >= 6


def test_conformance_finds_the_vectors_of_a_checkout():
    assert vectors.DEFAULT_DIR == ROOT / "protocol" / "vectors"
    assert (vectors.DEFAULT_DIR / "invalid.json").is_file()
