"""Builds the compiled extensions; everything else is in pyproject.toml.

* ``sodp_fast._cpu_ext`` (always): the CPU kernels of every fused op (csrc/cpu/), g++ with OpenMP. Like the CUDA
  extension it takes raw pointers and never includes torch headers, so it needs only pybind11 and a C++ compiler.
  No ``-march=native``: the wheel must run on any x86-64 (the loops vectorise with the baseline SSE2).
* ``sodp_fast._cuda_ext`` (optional): the CUDA kernels (csrc/*.cu) with nvcc, linked against the static CUDA
  runtime and never against torch, so it works with whichever CUDA build of torch is installed. Without nvcc on
  PATH (or CUDA_HOME), or with SODP_NO_CUDA=1, the package installs without it and ``sodp info`` says so.

Both compile the per-element math of csrc/kernel_math.h. nvcc runs without --use_fast_math so that the GPU
evaluates the same IEEE float32 expressions as the CPU build (approximate exp/division would not; the kernels are
memory-bound, so exact math costs nothing measurable).

Environment:
  SODP_NO_CUDA=1            skip the CUDA extension
  SODP_CUDA_ARCHS="80;90"   SM architectures to compile for (PTX for the highest is embedded too)
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("csrc")
CPU_EXT, CUDA_EXT = "sodp_fast._cpu_ext", "sodp_fast._cuda_ext"


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
    """CUDA extension: compiles the .cu files with nvcc into objects, then lets setuptools compile the bindings and
    link; or, without nvcc, drops it. The CPU extension is plain setuptools C++."""

    def run(self):
        super().run()  # builds into build/ (inplace is off during the build), then copies in place if asked
        if self.inplace and not any(e.name == CUDA_EXT for e in self.extensions):
            self.remove_stale_cuda_ext(in_source=True)

    def remove_stale_cuda_ext(self, in_source: bool = False):
        """A _cuda_ext left by an earlier build would otherwise be packaged from build/ (or imported in place)."""
        stale = Path(self.get_ext_fullpath(CUDA_EXT))
        if in_source:
            stale = Path(self.get_finalized_command("build_py").get_package_dir("sodp_fast")) / stale.name
        stale.unlink(missing_ok=True)

    def build_extensions(self):
        nvcc = None if os.environ.get("SODP_NO_CUDA") == "1" else find_nvcc()
        if nvcc is None:
            why = "SODP_NO_CUDA=1" if os.environ.get("SODP_NO_CUDA") == "1" else "nvcc not found"
            print(f"sodp_fast: building WITHOUT the CUDA extension ({why}); "
                  "the torch, cpp and triton backends remain available", file=sys.stderr)
            self.remove_stale_cuda_ext()
            self.extensions = [e for e in self.extensions if e.name != CUDA_EXT]
            super().build_extensions()
            return
        cuda_home = find_cuda_home(nvcc)
        archs = [a.strip() for a in os.environ.get("SODP_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        build_tmp = Path(self.build_temp) / "cuda"
        build_tmp.mkdir(parents=True, exist_ok=True)
        for ext in [e for e in self.extensions if e.name == CUDA_EXT]:
            cmds = []
            for src in [s for s in ext.sources if s.endswith(".cu")]:
                obj = build_tmp / (Path(src).stem + ".o")
                cmds.append([nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                             f"-I{CSRC}", *gencode])
                print(" ".join(cmds[-1]), file=sys.stderr)
            with ThreadPoolExecutor(self.parallel or 1) as pool:  # build_ext -j N: N nvcc processes at once
                for done in pool.map(subprocess.run, cmds):
                    done.check_returncode()
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_objects = [cmd[4] for cmd in cmds]
            ext.library_dirs = [str(cuda_home / d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")
                                if (cuda_home / d).is_dir()]
            ext.include_dirs += [str(cuda_home / d) for d in ("include", "targets/x86_64-linux/include")
                                 if (cuda_home / d).is_dir()]
        super().build_extensions()


def extensions() -> list[Extension]:
    import pybind11

    cpu = Extension(
        CPU_EXT,
        sources=sorted(str(p) for p in (CSRC / "cpu").glob("*.cpp")),
        depends=[str(CSRC / "kernel_math.h"), str(CSRC / "cpu" / "parallel.h")],
        include_dirs=[pybind11.get_include(), str(CSRC)],
        # -fno-trapping-math lets gcc if-convert the clamps and selects (Python never traps on FP exceptions);
        # it changes no result, unlike -ffast-math
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math"],
        extra_link_args=["-fopenmp"],
        language="c++",
    )
    cuda = Extension(
        CUDA_EXT,
        sources=[str(CSRC / "bindings.cpp"), *sorted(str(p) for p in CSRC.glob("*.cu"))],
        include_dirs=[pybind11.get_include(), str(CSRC)],
        libraries=["cudart_static", "dl", "rt", "pthread"],
        extra_compile_args=["-O3", "-std=c++17"],
        language="c++",
    )
    return [cpu, cuda]


setup(ext_modules=extensions(), cmdclass={"build_ext": NvccBuildExt})
