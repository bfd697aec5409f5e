"""Builds the optional CUDA extension ``sodp_fast._cuda_ext`` with nvcc; everything else is in pyproject.toml.

The extension needs only nvcc, pybind11 and a C++ compiler: it is linked against the static CUDA runtime and
never against torch, so it works with whichever CUDA build of torch is installed. Without nvcc on PATH (or
CUDA_HOME), or with SODP_NO_CUDA=1, the package installs without it and ``sodp info`` says so.

Environment:
  SODP_NO_CUDA=1            skip the extension
  SODP_CUDA_ARCHS="80;90"   SM architectures to compile for (PTX for the highest is embedded too)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("csrc")


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").is_file():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cuda_home(nvcc: str) -> Path:
    """The toolkit root nvcc really uses (``nvcc`` on PATH is often a wrapper script or a symlink)."""
    out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    for line in out.splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    return Path(nvcc).resolve().parent.parent


class NvccBuildExt(build_ext):
    """Compiles the .cu files with nvcc into objects, then lets setuptools compile the bindings and link."""

    def build_extensions(self):
        nvcc = None if os.environ.get("SODP_NO_CUDA") == "1" else find_nvcc()
        if nvcc is None:
            why = "SODP_NO_CUDA=1" if os.environ.get("SODP_NO_CUDA") == "1" else "nvcc not found"
            print(f"sodp_fast: building WITHOUT the CUDA extension ({why}); "
                  "the torch and triton backends remain available", file=sys.stderr)
            self.extensions = []
            return
        cuda_home = find_cuda_home(nvcc)
        archs = [a.strip() for a in os.environ.get("SODP_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        build_tmp = Path(self.build_temp) / "cuda"
        build_tmp.mkdir(parents=True, exist_ok=True)
        for ext in self.extensions:
            objects = []
            for src in [s for s in ext.sources if s.endswith(".cu")]:
                obj = build_tmp / (Path(src).stem + ".o")
                cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "--use_fast_math",
                       "-Xcompiler", "-fPIC", f"-I{CSRC}", *gencode]
                print(" ".join(cmd), file=sys.stderr)
                subprocess.check_call(cmd)
                objects.append(str(obj))
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = objects
            ext.library_dirs = [str(cuda_home / d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")
                                if (cuda_home / d).is_dir()]
            ext.include_dirs += [str(cuda_home / d) for d in ("include", "targets/x86_64-linux/include")
                                 if (cuda_home / d).is_dir()]
        super().build_extensions()


def extension() -> Extension:
    import pybind11

    return Extension(
        "sodp_fast._cuda_ext",
        sources=[str(CSRC / "bindings.cpp"), *sorted(str(p) for p in CSRC.glob("*.cu"))],
        include_dirs=[pybind11.get_include(), str(CSRC)],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_compile_args=["-O3", "-std=c++17"],
        language="c++",
    )


setup(ext_modules=[extension()], cmdclass={"build_ext": NvccBuildExt})
