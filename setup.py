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
        "salesforce-lavis==1.0.2",
        # LAVIS 1.0.2 pins opencv-python-headless 4.5.5, which is built against numpy 1.
        "numpy<2",
        # pandas 3.1 requires numpy 2.
        "pandas<3.1",
        "transformers>=4.25,<4.27",
        "torch==2.14.1",
        "torchvision==0.29.1",
        # shot-sweep plots (Agg backend, no display needed)
        "matplotlib>=3.5",
        # aim_opt's demonstration bank and mmict_blip2's demo feature cache on disk
        # (transformers 4.26 does not pull it in)
        "safetensors>=0.3",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
