#!/usr/bin/env bash
# The one test command (README and CI call it):
#   bash scripts/test.sh
# Installs missing Debian packages and cargo-nextest, then: fmt check, one build of everything,
# clippy, nextest, doc tests. Runs every step it can even after a failure, prints a summary, exits non-zero when
# any step failed. With CI set, nextest uses the `ci` profile of .config/nextest.toml.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

START=$SECONDS
LOG_DIR="$(mktemp -d -t damselfly-test.XXXXXX)"
trap 'rm -rf "$LOG_DIR"' EXIT
FAILED=()
SUMMARY=()

# step NAME CMD...: runs CMD with a header, records its time and result; never exits.
step() {
    local name="$1"
    shift
    local t0=$SECONDS
    local shown=("$@")
    if [[ "$1" == tee_log ]]; then
        shown=("${@:3}")
    fi
    echo
    echo "==== [$(date +%H:%M:%S)] ${name}: ${shown[*]} ===="
    local rc=0
    "$@" || rc=$?
    local took=$((SECONDS - t0))
    if [[ $rc -eq 0 ]]; then
        SUMMARY+=("ok      ${took}s  ${name}")
    else
        SUMMARY+=("FAILED  ${took}s  ${name} (exit ${rc})")
        FAILED+=("$name")
    fi
    return 0
}

skip() {
    SUMMARY+=("skipped     $1 ($2)")
    FAILED+=("$1")
}

# Runs a test command, keeping a copy of its output to count passed and failed tests.
tee_log() {
    local log="$1"
    shift
    "$@" 2>&1 | tee "$log"
}

NEXTEST_PROFILE=()
if [[ -n "${CI:-}" ]]; then
    NEXTEST_PROFILE=(--profile ci)
fi

# install_nextest: cargo-nextest runs the tests. When it is missing: the prebuilt binary when
# get.nexte.st is reachable (seconds), else built from crates.io (`cargo install`, minutes).
install_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest --version | head -n 1
        return 0
    fi
    local bin="${CARGO_HOME:-$HOME/.cargo}/bin" platform=""
    case "$(uname -m)" in
        x86_64) platform=linux ;;
        aarch64) platform=linux-arm ;;
    esac
    mkdir -p "$bin"
    if [[ -n "$platform" ]]; then
        echo "cargo-nextest missing: fetching the prebuilt binary into $bin"
        if curl -fsSL --connect-timeout 10 --max-time 120 "https://get.nexte.st/latest/$platform" 2>/dev/null |
            tar -xzf - -C "$bin" 2>/dev/null && cargo nextest --version >/dev/null 2>&1; then
            return 0
        fi
        echo "the prebuilt binary is not reachable: building cargo-nextest from crates.io"
    fi
    cargo install cargo-nextest --locked
}

step "setup" bash scripts/setup.sh
step "cargo-nextest" install_nextest
step "fmt" cargo fmt --all -- --check
step "k8s manifests" bash scripts/check-k8s.sh
step "build" cargo build --workspace --all-targets --locked
if [[ " ${FAILED[*]} " == *" build "* ]]; then
    skip "clippy" "build failed"
    skip "tests" "build failed"
    skip "doc tests" "build failed"
    skip "bench smoke" "build failed"
    skip "fault suite (CI subset)" "build failed"
else
    step "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
    if [[ " ${FAILED[*]} " == *" cargo-nextest "* ]]; then
        skip "tests" "cargo-nextest could not be installed"
    else
        step "tests" tee_log "$LOG_DIR/nextest.log" \
            cargo nextest run --workspace --locked --no-fail-fast "${NEXTEST_PROFILE[@]}"
    fi
    step "doc tests" tee_log "$LOG_DIR/doctest.log" cargo test --workspace --doc --locked
    # The benchmark harness end to end at toy size (N=2 network namespaces, small files), on the
    # debug binaries built above: checks the harness works, never the numbers.
    step "bench smoke" env BENCH_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" SKIP_BUILD=1 bash benches/scripts/smoke.sh
    # Faults on real processes in namespaces, short subset (~40 s): fails on any corrupt byte
    # delivered, any pull failed without a clear error, or any pull that hangs.
    step "fault suite (CI subset)" env BENCH_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" SKIP_BUILD=1 \
        bash benches/scripts/fault-suite.sh --cases ci
fi

# Count tests over both runners: nextest's "Summary ... N tests run: N passed, N failed" and
# libtest's "test result: ok. N passed; N failed;".
count() {
    local what="$1"
    cat "$LOG_DIR"/*.log 2>/dev/null |
        grep -E '^ *Summary \[|^test result:' |
        grep -oE "[0-9]+ ${what}" |
        awk '{ n += $1 } END { print n + 0 }'
}
PASSED=$(count passed)
FAILED_TESTS=$(count failed)

echo
echo "==== summary ===="
printf '%s\n' "${SUMMARY[@]}"
ELAPSED=$((SECONDS - START))
printf 'total elapsed: %dm%02ds\n' $((ELAPSED / 60)) $((ELAPSED % 60))
echo "tests: ${PASSED} passed, ${FAILED_TESTS} failed"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
