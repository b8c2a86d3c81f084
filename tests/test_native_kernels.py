"""Builds cpp/tests/kernel_test.cpp against each SIMD kernel table and runs it.

The C++ test (no Python, no pybind11) holds one table against the scalar reference; here it is
compiled once per table, as the CMake build compiles each unit (only the ISA's own file gets the ISA
flags), with -Wall -Wextra -Werror:

- scalar against itself: a check of the harness, on any host;
- AVX2 natively (reference.cpp + avx2.cpp + avx2_kquants.cpp), on an x86-64 CPU with AVX2, FMA and F16C;
- AVX-512 through SIMDe (avx512.cpp and avx512_packed.cpp with -DPE_SIMDE), on any CPU: the SIMDe
  headers stand in for the instructions; and natively (with the AVX2 units it takes entries from),
  on a CPU with AVX-512 F, BW, VL and VNNI;
- NEON cross-compiled for arm64 (reference.cpp + neon.cpp + neon_kquants.cpp, linked statically) and run under
  qemu-aarch64, twice: with the dot-product extension (sdot) and without it (the smull fallback).
  On an arm64 host it is built and run natively instead.

A missing toolchain (compiler, cross compiler, qemu-aarch64, SIMDe headers) skips its test, except
where CI=true: the CI image must provide them, so there it fails. Tool names can be overridden with
CXX, PE_AARCH64_CXX, PE_QEMU_AARCH64 and PE_SIMDE_INCLUDE.

Only the source tree is needed: the pyengine package is not imported.
"""

import os
import platform
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPP = ROOT / "cpp"
KERNEL_TEST = CPP / "tests" / "kernel_test.cpp"
REFERENCE = CPP / "quant" / "reference.cpp"
# The oracle is built as CMake builds it: no fused multiply-adds (they change Q4_0 bytes on arm64).
REFERENCE_FLAGS = ["-ffp-contract=off"]
# reference.cpp's type table names the K-quant-era quantizers, which live in quantize_kquants.cpp
# (built like it): every binary links both.
REFERENCE_UNITS = [(REFERENCE, REFERENCE_FLAGS), (CPP / "quant" / "quantize_kquants.cpp", REFERENCE_FLAGS)]

COMMON_FLAGS = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror"]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-ffp-contract=off"]
# As CMakeLists.txt builds avx512.cpp and avx512_packed.cpp (GCC 12 warns about the _mm512_undefined_*
# values inside its own headers).
AVX512_FLAGS = AVX2_FLAGS + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-Wno-uninitialized",
                             "-Wno-maybe-uninitialized"]
# As in CMakeLists.txt: the NEON K-quant unit repeats the reference's separate multiplies and adds, which
# GCC would fuse on arm64 by default.
NEON_KQUANT_FLAGS = ["-ffp-contract=off"]
# GCC 12 warns about _mm512_undefined_* inside its own intrinsic headers (as in CMakeLists.txt), and
# that SIMDe's 64-byte vector types passed by value have another ABI without -mavx512f (-Wpsabi;
# harmless here, see cpp/tests/simde_avx512.h). No contraction, as in CMakeLists.txt. -Og: this build
# checks what the kernels compute, not how fast, and the same IEEE operations give the same bits at any
# optimisation level; at -O2 GCC took 45 s over avx512_packed.cpp's SIMDe code (6 s at -Og, where the
# test then ran 5.3 s against 4.9).
AVX512_SIMDE_FLAGS = ["-DPE_SIMDE", "-Og", "-ffp-contract=off", "-Wno-uninitialized", "-Wno-maybe-uninitialized",
                      "-Wno-psabi"]
NEON_MARCH = {"dotprod": "armv8.2-a+dotprod", "baseline": "armv8-a"}
NEON_TARGET = {"dotprod": "aarch64+dotprod", "baseline": "aarch64 (no dotprod)"}

# Random trials per case family: every adversarial case runs once per trial. qemu runs the arm64
# binary about 20x slower than native, so it gets fewer.
NATIVE_TRIALS = 4
EMULATED_TRIALS = 2
RUN_TIMEOUT_S = 120

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
IS_ARM64 = platform.machine().lower() in ("aarch64", "arm64")


def missing(what):
    """Skips the test for a missing tool, or fails it where CI=true (CI must install the tools)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI=true, so the CI image must provide it")
    pytest.skip(what)


def tool_command(env_var, default):
    """The command for a tool, as a list: the variable may hold arguments."""
    return shlex.split(os.environ.get(env_var, "")) or [default]


def find_tool(env_var, default):
    """tool_command(), or None if its program is not on PATH."""
    command = tool_command(env_var, default)
    return command if shutil.which(command[0]) else None


def native_compiler():
    cxx = find_tool("CXX", "g++")
    if cxx is None:
        missing(f"no C++ compiler: {tool_command('CXX', 'g++')[0]} not found on PATH")
    return cxx


def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo, or an empty set where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def simde_include_dir():
    """A directory holding simde/x86/avx512.h, or None."""
    candidates = [os.environ.get("PE_SIMDE_INCLUDE", ""), "/usr/include", "/usr/local/include"]
    for directory in filter(None, candidates):
        if (Path(directory) / "simde" / "x86" / "avx512.h").is_file():
            return directory
    return None


def build(out_dir, cxx, table, units, link_flags=()):
    """Compiles kernel_test.cpp (testing `table`) and each (source, flags) unit to objects, in parallel,
    links them and returns the binary's path. A compiler error fails the test with its output."""
    units = [(KERNEL_TEST, [f"-DPE_TEST_TABLE={table}"])] + list(units)
    jobs = []
    for source, flags in units:
        obj = out_dir / (source.stem + ".o")
        jobs.append(cxx + COMMON_FLAGS + list(flags) + ["-c", str(source), "-o", str(obj)])

    def run(cmd):
        return cmd, subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, jobs))
    objects = [cmd[-1] for cmd in jobs]
    binary = out_dir / "kernel_test"
    results.append(run(cxx + list(link_flags) + objects + ["-o", str(binary)]))
    for cmd, proc in results:
        if proc.returncode != 0:
            pytest.fail(f"build failed: {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return binary


def run_kernel_test(command, trials, expect_target=None):
    """Runs the test binary; passes only on exit code 0 and a last line 'N passed, 0 failed'."""
    command = [str(c) for c in command] + ["--trials", str(trials)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{shlex.join(command)} ran past {RUN_TIMEOUT_S} s")
    output = proc.stdout + proc.stderr
    print(output)  # the per-check summary, shown by pytest on failure or with -s
    lines = proc.stdout.strip().splitlines()
    match = SUMMARY.match(lines[-1]) if lines else None
    if proc.returncode != 0 or match is None or int(match.group(2)) != 0 or int(match.group(1)) == 0:
        pytest.fail(f"{shlex.join(command)} exited with {proc.returncode}:\n{output[-6000:]}")
    if expect_target is not None:
        assert f"built for {expect_target}," in lines[0], lines[0]


def test_scalar_table_against_itself(tmp_path_factory):
    """The harness itself: the reference held against itself must agree exactly."""
    cxx = native_compiler()
    out = tmp_path_factory.mktemp("kernel_test_scalar")
    binary = build(out, cxx, "kernels_scalar", REFERENCE_UNITS)
    run_kernel_test([binary], NATIVE_TRIALS)


def test_avx2_table(tmp_path_factory):
    if not IS_X86_64:
        pytest.skip(f"the AVX2 kernels are x86-64 only (this machine is {platform.machine()})")
    absent = {"avx2", "fma", "f16c"} - cpu_flags()
    if absent:
        pytest.skip(f"this CPU lacks {', '.join(sorted(absent))}")
    cxx = native_compiler()
    out = tmp_path_factory.mktemp("kernel_test_avx2")
    units = REFERENCE_UNITS + [(CPP / "kernels" / "avx2.cpp", AVX2_FLAGS),
                                (CPP / "kernels" / "avx2_kquants.cpp", AVX2_FLAGS)]
    binary = build(out, cxx, "kernels_avx2", units)
    run_kernel_test([binary], NATIVE_TRIALS, expect_target="x86-64")


def test_avx512_table_through_simde(tmp_path_factory):
    cxx = native_compiler()
    include = simde_include_dir()
    if include is None:
        missing("SIMDe headers not found (simde/x86/avx512.h; Debian: libsimde-dev, or set PE_SIMDE_INCLUDE)")
    out = tmp_path_factory.mktemp("kernel_test_avx512_simde")
    flags = AVX512_SIMDE_FLAGS + ["-I" + include]  # -I of a system directory is a no-op, as it should be
    units = [(CPP / "kernels" / "avx512.cpp", flags), (CPP / "kernels" / "avx512_packed.cpp", flags)]
    binary = build(out, cxx, "kernels_avx512_simde", REFERENCE_UNITS + units)
    run_kernel_test([binary], NATIVE_TRIALS)


def test_avx512_table(tmp_path_factory):
    """The AVX-512 table as the package builds it (its VNNI packed kernels, and what it takes from the
    AVX2 table), natively, where the CPU has AVX-512 F, BW, VL and VNNI; elsewhere SIMDe's build above
    stands in."""
    if not IS_X86_64:
        pytest.skip(f"the AVX-512 kernels are x86-64 only (this machine is {platform.machine()})")
    absent = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"} - cpu_flags()
    if absent:
        pytest.skip(f"this CPU lacks {', '.join(sorted(absent))}")
    cxx = native_compiler()
    out = tmp_path_factory.mktemp("kernel_test_avx512")
    units = REFERENCE_UNITS + [(CPP / "kernels" / "avx2.cpp", AVX2_FLAGS),
                                (CPP / "kernels" / "avx2_kquants.cpp", AVX2_FLAGS),
                                (CPP / "kernels" / "avx512.cpp", AVX512_FLAGS),
                                (CPP / "kernels" / "avx512_packed.cpp", AVX512_FLAGS)]
    binary = build(out, cxx, "kernels_avx512", units)
    run_kernel_test([binary], NATIVE_TRIALS, expect_target="x86-64")


@pytest.mark.parametrize("variant", ["dotprod", "baseline"])
def test_neon_table(tmp_path_factory, variant):
    march = ["-march=" + NEON_MARCH[variant]]
    if IS_ARM64:
        cxx = native_compiler()
        if variant == "dotprod" and "asimddp" not in cpu_flags():
            pytest.skip("this arm64 CPU lacks the dot-product extension (asimddp)")
        emulator, link = [], []
        trials = NATIVE_TRIALS
    else:
        cxx = find_tool("PE_AARCH64_CXX", "aarch64-linux-gnu-g++")
        if cxx is None:
            name = tool_command("PE_AARCH64_CXX", "aarch64-linux-gnu-g++")[0]
            missing(f"no arm64 cross compiler: {name} not found on PATH (Debian: g++-aarch64-linux-gnu)")
        qemu = find_tool("PE_QEMU_AARCH64", "qemu-aarch64")
        if qemu is None:
            name = tool_command("PE_QEMU_AARCH64", "qemu-aarch64")[0]
            missing(f"no arm64 emulator: {name} not found on PATH (Debian: qemu-user)")
        # Static: qemu then needs no arm64 shared libraries.
        emulator, link = qemu, ["-static"]
        trials = EMULATED_TRIALS
    out = tmp_path_factory.mktemp(f"kernel_test_neon_{variant}")
    # On arm64 every unit is built for the same target (there is no per-unit ISA flag to add).
    units = REFERENCE_UNITS + [(CPP / "kernels" / "neon.cpp", []),
                                (CPP / "kernels" / "neon_kquants.cpp", NEON_KQUANT_FLAGS)]
    binary = build(out, cxx + march, "kernels_neon", units, link_flags=link)
    run_kernel_test(emulator + [binary], trials, expect_target=NEON_TARGET[variant])


def test_neon_unit_is_a_stub_off_arm64(tmp_path_factory):
    """Off arm64 neon.cpp and neon_kquants.cpp compile cleanly, to a kernels_neon() that returns nullptr
    and an add_neon_kquant_kernels() that changes nothing (the build lists both for every architecture)."""
    if IS_ARM64:
        pytest.skip("this is an arm64 host: neon.cpp is the real kernels here")
    cxx = native_compiler()
    out = tmp_path_factory.mktemp("neon_stub")
    probe = out / "probe.cpp"
    probe.write_text(
        '#include "kernels/kernels.h"\n'
        "int main() {\n"
        "    pe::Kernels k{};\n"
        "    pe::add_neon_kquant_kernels(k);\n"
        "    for (unsigned t = 0; t < pe::TYPE_COUNT; t++)\n"
        "        if (k.vec_dot[t] || k.from_float[t]) return 2;\n"
        "    return pe::kernels_neon() == nullptr ? 0 : 1;\n"
        "}\n"
    )
    sources = [str(CPP / "kernels" / "neon.cpp"), str(CPP / "kernels" / "neon_kquants.cpp")]
    cmd = cxx + COMMON_FLAGS + NEON_KQUANT_FLAGS + [f"-I{CPP}", str(probe)] + sources + ["-o", str(out / "probe")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{proc.stdout}{proc.stderr}"
    rc = subprocess.run([str(out / "probe")]).returncode
    assert rc != 2, "add_neon_kquant_kernels() set entries off arm64"
    assert rc == 0, "kernels_neon() is not nullptr off arm64"
