"""hvams: distributed trainer for image-aware CTR models (AMS + DICM)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def pinned_requirements():
    """The pins of requirements.txt, the single place where versions live."""
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="hvams",
    version="0.1.0",
    description="Advanced Model Server trainer for image-aware CTR models (DICM)",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["hvams", "hvams.*", "cli", "cli.*"]),
    install_requires=pinned_requirements(),
    entry_points={"console_scripts": ["hvams=cli.main:main"]},
)
