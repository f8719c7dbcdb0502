"""lavis-mmict: install into an environment that has (or will get) LAVIS 1.0.2.

``install_requires`` holds compatible ranges, so ``pip install`` keeps the torch (and its CUDA
build) already there when it is in range; the exact versions this repository is tested with are in
``constraints.txt``, which ``make`` applies: ``pip install -c constraints.txt -e .[test]``.
``projects/`` (experiment configs) and ``run_scripts/`` live in the checkout, not in the package.
"""
from setuptools import find_namespace_packages, setup

setup(
    name="lavis-mmict",
    version="0.1.0",
    description="MMICT and AIM multi-modal in-context learning for Salesforce LAVIS",
    # Namespace discovery also lists the data folders (configs/, assets/) as packages, so their
    # files install with the code.
    packages=find_namespace_packages(include=["lavis_mmict", "lavis_mmict.*"]),
    package_data={"": ["*.yaml", "*.json", "*.txt"]},
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=[
        # the plugin subclasses and patches LAVIS 1.0.2's internals (lavis_mmict/compat.py)
        "salesforce-lavis==1.0.2",
        # any torch with torch.amp.GradScaler("cuda") (2.3+); LAVIS brings a matching torchvision
        "torch>=2.3,<3",
        # LAVIS 1.0.2 pins opencv-python-headless 4.5.5, which is built against numpy 1.
        "numpy>=1.21,<2",
        # pandas 3.1 requires numpy 2.
        "pandas<3.1",
        # LAVIS 1.0.2's BLIP-2 code needs transformers < 4.27
        "transformers>=4.25,<4.27",
        "tokenizers>=0.11",
        # imported by lavis_mmict itself (LAVIS pulls most of them too)
        "omegaconf>=2.1",
        "timm>=0.4.12",
        "webdataset>=0.2",
        "decord>=0.6",
        # cv2: the headless build, as LAVIS (opencv-python beside it would overwrite cv2's files)
        "opencv-python-headless>=4.5",
        "pycocoevalcap>=1.2",
        "pycocotools>=2.0",
        "pillow>=8",
        "tqdm>=4.40",
        # shot-sweep plots (Agg backend, no display needed)
        "matplotlib>=3.5",
        # aim_opt's demonstration bank and mmict_blip2's demo feature cache on disk
        # (transformers 4.26 does not pull it in)
        "safetensors>=0.3",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
    entry_points={
        "console_scripts": [
            "lavis-mmict-train = lavis_mmict.commands:train_main",
            "lavis-mmict-evaluate = lavis_mmict.commands:evaluate_main",
        ],
    },
)
