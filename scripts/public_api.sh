#!/usr/bin/env bash
# The library's public API, from rustdoc's JSON (stable rustdoc, its unstable JSON output let
# through by RUSTC_BOOTSTRAP), diffed against the committed snapshot
# crates/linear-softmax/public-api.txt; `--bless` rewrites the snapshot instead. The workspace's
# own features, so the dependencies' check builds are `cargo doc`'s (RUSTC_BOOTSTRAP makes cargo
# rebuild some of them: .ci/run runs this last).
set -euo pipefail
cd "$(dirname "$0")/.."
snapshot=crates/linear-softmax/public-api.txt
json_dir=target
log="$json_dir/public-api.log"
mkdir -p "$json_dir"
if ! RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
    cargo doc --workspace --no-deps >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
current="$(python3 scripts/public_api.py "$json_dir/doc/linear_softmax.json")"
if [ "${1:-}" = "--bless" ]; then
    printf '%s\n' "$current" >"$snapshot"
    echo "wrote $snapshot ($(wc -l <"$snapshot") items)"
elif ! diff -u "$snapshot" <(printf '%s\n' "$current"); then
    echo "the public API changed: review the diff above, then run scripts/public_api.sh --bless" >&2
    exit 1
else
    echo "public API unchanged ($(wc -l <"$snapshot") items)"
fi
