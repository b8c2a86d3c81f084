#!/usr/bin/env bash
# The tests against a native core built with AddressSanitizer and UndefinedBehaviorSanitizer
# (CMake option PYENGINE_SANITIZE), where every out-of-bounds access, use after free, overflow of a
# signed integer, misaligned load, ... stops the run with a report and a stack.
#
#   bench/sanitize.sh                     # the native-code tests (the default list below)
#   bench/sanitize.sh tests/              # the whole suite, or any pytest arguments
#   PYTHON=/path/to/python bench/sanitize.sh
#   bench/sanitize.sh --build-only        # build the core only: .ci/run starts this early,
#                                         # in the background, and runs the tests at the end
#
# The core is built in build/sanitize (RelWithDebInfo: -O2 -g) and staged with the package's Python
# files in build/sanitize/site, which goes first on PYTHONPATH; the Python used must have pyengine's
# dependencies and pytest, and must not import pyengine from elsewhere first (an editable install's
# import hook does: use another environment). The interpreter itself is not instrumented, so the ASan
# runtime is preloaded; leak detection is off, since CPython does not free everything at exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build/sanitize"
SITE="$BUILD/site"
PYTHON="${PYTHON:-python3}"

pybind11_dir="$("$PYTHON" -c 'import pybind11; print(pybind11.get_cmake_dir())')"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYENGINE_SANITIZE=ON \
  -DPYENGINE_WERROR=ON -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v "$PYTHON")" >/dev/null
cmake --build "$BUILD"
if [ "${1:-}" = "--build-only" ]; then
  exit 0
fi

rm -rf "$SITE"
mkdir -p "$SITE/pyengine"
cp "$ROOT"/pyengine/*.py "$SITE/pyengine/"
cp "$BUILD"/_core*.so "$SITE/pyengine/"

export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# libstdc++ too: python is not linked with it, and ASan's C++ exception interceptor must find it at start
CXX="${CXX:-g++}"
export LD_PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
# Reports go to files as well as stderr: pytest captures a test's stderr, and an abort loses it.
REPORTS="$BUILD/reports"
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"

# From outside the repository, so that `import pyengine` finds the staged copy, not the source tree.
cd "$BUILD"
where="$("$PYTHON" -c 'import pyengine; print(pyengine.__file__)')"
if [ "$where" != "$SITE/pyengine/__init__.py" ]; then
  echo "sanitize.sh: $PYTHON imports pyengine from $where, not from $SITE: use an environment without an" \
       "editable install of pyengine (PYTHON=...)" >&2
  exit 1
fi

if [ $# -eq 0 ]; then
  set -- tests/test_gguf.py tests/test_forward.py tests/test_kernels.py tests/test_matmul.py tests/test_quants.py \
    tests/test_nf4.py tests/test_hostile_models.py tests/test_bad_input.py tests/test_interrupt.py \
    tests/test_concurrency.py tests/test_architectures.py
fi
args=()
for a in "$@"; do  # test paths are relative to the repository
  if [ -e "$ROOT/$a" ]; then args+=("$ROOT/$a"); else args+=("$a"); fi
done
status=0
"$PYTHON" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "${args[@]}" || status=$?
if compgen -G "$REPORTS/*" >/dev/null; then
  echo "sanitize.sh: sanitizer reports:" >&2
  cat "$REPORTS"/* >&2
  status=1
fi
exit $status
