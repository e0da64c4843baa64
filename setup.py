"""Builds the C++17 core `arcfast._core` (pybind11, numpy in and out, no PyTorch headers).

The three translation units compile in parallel, one job per CPU core (NPY_NUM_BUILD_JOBS=N sets
the count, as for numpy and pybind11 builds).
"""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("NPY_NUM_BUILD_JOBS", default=0).install()  # default 0: os.cpu_count() jobs

extra = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
if os.environ.get("ARCFAST_NATIVE", "0") == "1":  # host-specific build, e.g. on a GPU box
    extra.append("-march=native")

# The longest compile starts first and the other two share the second core. One core, -O3:
# pipeline.cpp 13.3 s, formats.cpp 8.6 s, module.cpp 4.9 s; so two cores take about as long as
# pipeline.cpp alone, where name order gives module.cpp then pipeline.cpp on one of them (18 s).
sources = sorted(glob.glob("csrc/*.cpp"), key=lambda p: (os.path.basename(p) != "pipeline.cpp", p))

ext = Pybind11Extension(
    "arcfast._core",
    sources,
    include_dirs=["csrc"],
    depends=sorted(glob.glob("csrc/*.h")),
    cxx_std=17,
    extra_compile_args=extra,
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
