"""Install mrt5-jax.

The top-level folders ``tasks/`` and ``configs/`` install as the subpackages
``mrt5_jax.tasks`` and ``mrt5_jax.configs`` (gin files ship as package data),
so nothing lands in site-packages under a bare name.
"""
import setuptools

setuptools.setup(
    name="mrt5-jax",
    version="0.1.0",
    description="MrT5 (MergeT5): ByT5 with a learned delete gate, in JAX/Flax for t5x and seqio",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["mrt5_jax", "mrt5_jax.*"])
    + ["mrt5_jax.tasks", "mrt5_jax.configs"],
    package_dir={"mrt5_jax.tasks": "tasks", "mrt5_jax.configs": "configs"},
    package_data={
        "mrt5_jax.configs": ["*.gin", "*/*.gin"],
        "mrt5_jax.tasks": ["data/*"],
    },
    include_package_data=True,
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax",
        "orbax-checkpoint",
        "seqio>=0.0.19",
        "tensorflow>=2.16",
        "tensorflow-datasets",
        "gin-config",
        "numpy",
        "tensorboardX",
        "tqdm",
        "safetensors",
    ],
    extras_require={
        "torch": ["torch==2.13.0", "transformers>=5.23,<6", "safetensors"],
        "test": [
            "torch==2.13.0",
            "transformers>=5.23,<6",
            "pytest",
            "pytest-xdist",
        ],
    },
    entry_points={
        "console_scripts": [
            "mrt5-train=mrt5_jax.cli.train:main",
            "mrt5-eval=mrt5_jax.cli.evaluate:main",
            "mrt5-convert=mrt5_jax.cli.convert:main",
            "mrt5-bench=mrt5_jax.cli.bench:main",
        ]
    },
)
