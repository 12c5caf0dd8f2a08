#!/usr/bin/env bash
# One prepared GPU check (issue 17): prints one table and writes it to $OUT/gpu_check.txt when $OUT is set.
#
#   bash benchmarks/gpu_check.sh             # on a machine with 1+ GPUs, from anywhere; under 8 minutes on one H200
#   bash benchmarks/gpu_check.sh --smoke     # toy sizes on CPU (what tests/test_gpu_check.py runs)
#
# Needs torch, timm, numpy, pandas, pyarrow, scipy, scikit-learn, pyyaml, tqdm, threadpoolctl. The notebook-only
# packages that heartbeit_lib imports at module level (papermill, nbformat and nbconvert through
# pipeline/runs.py; defusedxml through cohorts -> io/muse.py) are replaced by inert stand-ins when missing:
# this check never calls them. GPU_CHECK_STUB_ALL=1 uses the stand-ins even where the packages exist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
STUBS=$(mktemp -d)
trap 'rm -rf "$STUBS"' EXIT
stub() {  # stub <package> [submodule ...]
  mkdir -p "$STUBS/$1"
  for f in __init__ "${@:2}"; do
    cat > "$STUBS/$1/$f.py" <<PYEOF
"""Stand-in written by benchmarks/gpu_check.sh: $1 is not installed here and gpu_check never calls it."""


class _Missing:
    def __init__(self, *args, **kwargs):
        raise ImportError("$1 is not installed (benchmarks/gpu_check.sh stand-in)")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing
PYEOF
  done
}
stubbed=()
for mod in papermill nbformat nbconvert defusedxml; do
  if [ -n "${GPU_CHECK_STUB_ALL:-}" ] || ! "$PY" -c "import $mod" 2>/dev/null; then
    if [ "$mod" = defusedxml ]; then stub defusedxml ElementTree; else stub "$mod"; fi
    stubbed+=("$mod")
  fi
done
if [ -n "${GPU_CHECK_STUB_ALL:-}" ]; then
  export PYTHONPATH="$STUBS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$STUBS"  # real packages, where present, come first
fi
echo "gpu_check.sh: stand-ins for: ${stubbed[*]:-none}"
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py "$@"
