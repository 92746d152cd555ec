"""The native operators of the fast path: building them, loading them, and their switches.

``csrc/fiber_conv.cpp`` holds the CPU kernels (AVX2 + FMA, AVX-512 tiles where the CPU has them) and
``csrc/ops.cpp`` registers them as operators in the ``mfnet`` namespace (``torch.ops.mfnet.*``), each running its
work items on PyTorch's intra-op thread pool, so ``torch.set_num_threads`` governs them. They are compiled with
``torch.utils.cpp_extension`` the first time they are needed, into a cache keyed by the sources, the flags and the
compiler (``$MFNET_CACHE_DIR/kernels`` or ``~/.cache/mfnet/kernels``), and loaded from there afterwards.

Where they cannot be built (no C++ compiler or ninja, a CPU without AVX2), ``load()`` warns once with the reason
and how to fix it, and returns ``False``: every unit then runs on oneDNN or the reference path, with the same
numbers.

The fake implementations registered here let ``torch.compile`` and ``torch.export`` trace through the operators.

Switches (environment variables, read when the operators are first loaded; unset means on):

``MFNET_KERNELS=0``
    never build or use the native operators.
``MFNET_KERNEL_AVX512=0``
    the AVX2 tiles even where the CPU has AVX-512 (same numbers).
``MFNET_KERNEL_WINOGRAD=0``
    the direct tiles instead of the Winograd tile for three taps along the rows (same numbers up to rounding).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch

KERNELS_SWITCH = "MFNET_KERNELS"
AVX512_SWITCH = "MFNET_KERNEL_AVX512"
WINOGRAD_SWITCH = "MFNET_KERNEL_WINOGRAD"
# -fopenmp at compile time only: at::parallel_for is a header template that needs it to run on PyTorch's OpenMP
# pool (without it every operator runs on one thread); nothing is linked, so its GOMP calls resolve to the OpenMP
# runtime that torch itself loaded, and no second runtime or pool exists.
CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")
SOURCES = ("ops.cpp", "fiber_conv.cpp", "fiber_conv.h")

_lock = threading.Lock()
_state: dict[str, object] = {}
# the operators written in Python on top of the native ones (mfnet::fiber_conv3d, mfnet::bn_relu_train, ...)
LIBRARY = torch.library.Library("mfnet", "FRAGMENT")
_FAKES: set[str] = set()


def switched_on(variable: str) -> bool:
    """Whether the switch ``variable`` is on: unset, or anything but ``0``, ``false``, ``no``, ``off``."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def avx512_available() -> bool:
    """Whether the CPU has what the AVX-512 tiles use: AVX-512F, and VL for the 8-wide vectors."""
    return {"avx512f", "avx512vl"} <= _cpu_flags()


def cache_dir() -> Path:
    """Where the compiled operators are kept: ``$MFNET_CACHE_DIR/kernels`` or ``~/.cache/mfnet/kernels``."""
    root = os.environ.get("MFNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mfnet")
    return Path(root) / "kernels"


def _compiler_id() -> str:
    """The C++ compiler ``torch.utils.cpp_extension`` runs (``$CXX`` or ``c++``) and its version line."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or ""
    if not compiler:
        return ""
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{compiler} {version.splitlines()[0] if version else ''}"


def _build_name(sources: dict[str, str], compiler: str) -> str:
    text = "\0".join([*sources.values(), " ".join(CFLAGS), compiler, torch.__version__])
    return "mfnet_ops_" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _build_and_load() -> None:
    """Compiles (once per cache key) and loads the operator library; raises with the compiler's message."""
    compiler = _compiler_id()
    if not compiler:
        raise RuntimeError("no C++ compiler found (looked for $CXX or c++ on PATH)")
    folder = resources.files("mfnet.fastpath").joinpath("csrc")
    sources = {name: folder.joinpath(name).read_text() for name in SOURCES}
    name = _build_name(sources, compiler)
    build_dir = cache_dir() / name
    library = build_dir / f"{name}.so"
    if not library.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        for file, text in sources.items():  # build from a copy, so that the cache key matches what is compiled
            (build_dir / file).write_text(text)
        # imported here: the extension tooling is needed only to build, once per machine
        from torch.utils import cpp_extension

        cpp_extension.load(
            name,
            [str(build_dir / "ops.cpp"), str(build_dir / "fiber_conv.cpp")],
            extra_cflags=list(CFLAGS),
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    else:
        torch.ops.load_library(str(library))


def load() -> bool:
    """Builds (first use) and loads the native operators; returns whether ``torch.ops.mfnet`` can run here.

    ``False`` with ``MFNET_KERNELS=0``, on a CPU without AVX2 and FMA, or where the build failed (then a warning
    says why, once per process).
    """
    if "loaded" in _state:  # without the lock: what a traced graph reads
        return bool(_state["loaded"])
    with _lock:
        if "loaded" in _state:
            return bool(_state["loaded"])
        loaded = False
        if switched_on(KERNELS_SWITCH) and {"avx2", "fma"} <= _cpu_flags():
            try:
                _build_and_load()
                loaded = True
            except Exception as err:  # a missing compiler, ninja or header: the reference path still runs
                warnings.warn(
                    f"mfnet could not build its native CPU operators, so the fast path runs on oneDNN only "
                    f"(the same numbers, slower): {err}. Install a C++ compiler and ninja (e.g. `apt install g++ "
                    f"ninja-build` or `pip install ninja`) and restart, or set {KERNELS_SWITCH}=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _state["loaded"] = loaded
        if loaded:
            _register_fakes()
            _state["avx512"] = switched_on(AVX512_SWITCH) and avx512_available()
            _state["winograd"] = switched_on(WINOGRAD_SWITCH)
            torch.ops.mfnet.set_tiles(bool(_state["avx512"]), bool(_state["winograd"]))
        return loaded


def avx512_on() -> bool:
    """Whether the operators use their AVX-512 tiles (``False`` where they are not loaded)."""
    return load() and bool(_state.get("avx512"))


def winograd_on() -> bool:
    """Whether the convolutions with three taps along the rows may use the Winograd tile (needs AVX-512)."""
    return avx512_on() and bool(_state.get("winograd"))


def set_avx512(on: bool | None = None) -> bool:
    """Turns the operators' AVX-512 tiles on or off (``None``: as ``MFNET_KERNEL_AVX512`` says; on only where the CPU
    has AVX-512F and VL); returns whether they are on. For tests and benchmarks: the AVX2 tiles compute the same
    numbers."""
    if not load():
        return False
    on = switched_on(AVX512_SWITCH) if on is None else bool(on)
    _state["avx512"] = on and avx512_available()
    torch.ops.mfnet.set_tiles(bool(_state["avx512"]), bool(_state["winograd"]))
    return bool(_state["avx512"])


def set_winograd(on: bool | None = None) -> bool:
    """Lets the convolutions with three taps along the rows use the Winograd tile (``None``: as
    ``MFNET_KERNEL_WINOGRAD`` says; it needs the AVX-512 tiles); returns the setting. The direct tiles compute the
    same convolution in another order (differences in the last places)."""
    if not load():
        return False
    _state["winograd"] = switched_on(WINOGRAD_SWITCH) if on is None else bool(on)
    torch.ops.mfnet.set_tiles(bool(_state["avx512"]), bool(_state["winograd"]))
    return bool(_state["winograd"])


def _register_fakes() -> None:
    """Fake implementations: every operator writes into tensors its caller allocated, so none returns anything."""
    names = (
        "pack",
        "mux_pack",
        "conv",
        "conv_dense",
        "tail",
        "conv_wgrad",
        "bn_relu",
        "bn_stats",
        "bn_relu_grad_sums",
        "bn_relu_grad_input",
        "max_pool",
    )
    for name in names:
        if name not in _FAKES:  # once per process, however often the state is reset
            torch.library.register_fake(f"mfnet::{name}", _writes_only, lib=LIBRARY)
            _FAKES.add(name)


def _writes_only(*args: object, **kwargs: object) -> None:
    return None
