# shellcheck shell=bash
# Environment shared by the project's scripts. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
#
# rocksdb: link Debian's librocksdb-dev (7.8) instead of building the bundled C++ (~10 min).
# After changing these variables run `cargo clean -p librocksdb-sys`.
export ROCKSDB_LIB_DIR=/usr/lib/x86_64-linux-gnu
export ROCKSDB_INCLUDE_DIR=/usr/include

# No colour escapes in logs when the output is not a terminal (CI, redirected runs).
if [[ ! -t 1 ]]; then
    export CARGO_TERM_COLOR=never
fi
