#!/usr/bin/env bash
# Run the whole test suite. Namespace tests need root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
cargo test --release --locked "$@"
