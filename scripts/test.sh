#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every unit and end-to-end test.
# Installs only what is missing, so repeat runs stay fast. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

need_cargo_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    log "installing rustup component $2"
    rustup component add "$2"
  fi
}

need_cargo_component fmt rustfmt
need_cargo_component clippy clippy

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
