from setuptools import find_packages, setup

setup(
    name="based_megatron",
    version="0.1.0",
    description="Train Based language models with megatron-core and DeepSpeed",
    python_requires=">=3.10",
    packages=find_packages(include=["based_megatron", "based_megatron.*"])
    + ["based_kernels"] + [f"based_kernels.{p}" for p in find_packages("kernels")],
    package_dir={"based_kernels": "kernels"},
    include_package_data=True,
    package_data={"based_megatron": ["hf/*.py"]},
    install_requires=[
        "torch>=2.4",
        "megatron-core==0.16.1; python_version < '3.12'",
        "megatron-core>=0.16.1; python_version >= '3.12'",
        "deepspeed>=0.19",
        "transformers>=5.0,<6",
        "tokenizers",
        "sentencepiece",
        "safetensors",
        "tensorboard",
        "tqdm",
        "rich",
        "zstandard",
        "psutil",
        "numpy",
    ],
    extras_require={
        "kernels": ["triton>=3.0"],
        "eval": ["lm-eval>=0.4.13", "accelerate"],
        "test": ["pytest", "triton>=3.0", "lm-eval>=0.4.13", "accelerate"],
    },
)
