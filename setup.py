"""flowctrl packaging. ``pip install -e .`` works on any machine with a recent torch; no CUDA needed.

The CUDA kernels in flowctrl_cuda/ are built just in time on first use on a CUDA machine, or at
install with ``FLOWCTRL_BUILD_CUDA=1`` (see flowctrl_cuda/README.md).
"""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.1",
    "numpy>=1.24",
    "pillow>=9.0",
    "diffusers>=0.32",
    "transformers>=4.46",
    "accelerate>=1.0",
    "safetensors>=0.4",
    "einops>=0.7",
    "kornia>=0.7",
    "opencv-python-headless>=4.8",
    "av>=12.0",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "ninja>=1.11",
    "matplotlib>=3.7",
    "scikit-image>=0.22",
    "scipy>=1.10",  # PCHIP drags and rotation slerp (also needed by scikit-image)
]
EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6.100", "scipy>=1.10", "pycolmap>=0.6", "peft>=0.12", "gradio>=6.0"],
    "bench": ["pycolmap>=0.6", "scipy>=1.10"],
    "raft": ["torchvision>=0.16"],
    "lora": ["peft>=0.12"],
    "text": ["sentencepiece>=0.2"],
    "app": ["gradio>=6.0"],
    # diffusers' Wan pipelines clean prompts with ftfy (a NameError without it); CogVideoX's T5 tokenizer is sentencepiece
    "guided": ["ftfy>=6.0", "sentencepiece>=0.2"],
}
EXTRAS["test"] = EXTRAS["test"] + ["ftfy>=6.0"]  # the guided backend's Wan tests encode prompts
# the web app's browser tests drive Debian's chromium (installed by .ci/run) with playwright
EXTRAS["test"] = EXTRAS["test"] + ["playwright>=1.40"]
# CI's lint step (.ci/run): ruff's rules in ruff.toml, DESIGN.md's layers as import-linter contracts (.importlinter)
EXTRAS["test"] = EXTRAS["test"] + ["ruff>=0.6", "import-linter>=2.17"]


def _cuda_extension_kwargs() -> dict:
    """``FLOWCTRL_BUILD_CUDA=1``: compile flowctrl_cuda._C at install (else: just in time on first use)."""
    import os

    if os.environ.get("FLOWCTRL_BUILD_CUDA", "0") != "1":
        return {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    csrc = "flowctrl_cuda/csrc"
    ext = CUDAExtension(
        "flowctrl_cuda._C",
        sources=[f"{csrc}/{name}" for name in ("bindings.cpp", "warp.cu", "splat.cu", "freq_adaptor.cu")],
        include_dirs=[os.path.abspath(csrc)],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="flowctrl",
    version="0.1.0",
    description="Controllable image-to-video: every motion control becomes one dense optical flow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["flowctrl", "flowctrl.*", "flowctrl_cuda", "flowctrl_cuda.*"]),
    package_data={"flowctrl_cuda": ["csrc/*.cu", "csrc/*.cpp", "csrc/*.h", "csrc/*.cuh"],
                  "flowctrl": ["presets/pipeline/*.yaml"]},
    include_package_data=True,
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["flowctrl=flowctrl.cli:main"]},
    **_cuda_extension_kwargs(),
)
