"""tfvae: variational autoencoders on TensorFlow Probability, made practical."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
INIT = (HERE / "tfvae" / "__init__.py").read_text()
VERSION = re.search(r'__version__ = "([^"]+)"', INIT).group(1)

setup(
    name="tfvae",
    version=VERSION,
    description="Variational autoencoders on TensorFlow Probability: train, measure, export.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The click front end lives in cli/ in the repository but installs as
    # tfvae_cli, so no bare top-level module called `cli` lands in site-packages.
    packages=find_packages(include=["tfvae", "tfvae.*"]) + ["tfvae_cli"],
    package_dir={"tfvae_cli": "cli"},
    package_data={"tfvae.data": ["datasets/*.xz"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-probability>=0.25,<0.26",
        "tensorflow-datasets>=4.9.10,<5",
        # tensorflow 2.21 no longer pulls in TensorBoard; run directories write its logs.
        "tensorboard>=2.20,<3",
        # tensorflow-datasets 4.9.10 imports importlib_resources without declaring it.
        "importlib_resources>=6",
        "numpy>=1.26,<3",
        "scikit-learn>=1.5,<2",
        "matplotlib>=3.8,<4",
        "click>=8.1,<9",
        "ai-edge-litert>=2.0,<3",
        # LiteRT files are read and their tensors named with the flatbuffers runtime.
        "flatbuffers>=24.3",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5,<4", "hypothesis>=6.100", "ruff>=0.6"],
        # The documentation site: `mkdocs build --strict` (mkdocs.yml, docs/).
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.26,<2"],
    },
    entry_points={"console_scripts": ["tfvae=tfvae_cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
