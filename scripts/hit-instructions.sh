#!/usr/bin/env bash
# Instructions per iteration of the cache's hit benches, counted by
# valgrind's callgrind: deterministic, so a ratio between two benches holds
# on a loaded machine where criterion's times do not (BENCHMARKS.md).
#
#   bash scripts/hit-instructions.sh ['^hit/layer$' ...]
#
# Each bench runs alone under callgrind for 2 s of criterion's
# `--profile-time`; the figure is the inclusive count of criterion's
# `Bencher::iter` divided by the calls it made to `support::drain` (one
# per iteration), so the request building, the call, the drain and the
# drops are all in it, as in the criterion figure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
    filters=('^hit/moka_in_handler_same_headers$' '^hit/layer$'
        '^hit_compressed/identity_without_accept_encoding$' '^hit_compressed/br_for_a_browser$')
fi
cargo bench --bench cache --no-run >/dev/null 2>&1
bin=$(ls -t target/release/deps/cache-* | grep -v '\.d$' | head -1)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for f in "${filters[@]}"; do
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --bench --profile-time 2 "$f" >/dev/null 2>&1
    callgrind_annotate --tree=calling --inclusive=yes "$out" 2>/dev/null |
        grep -A12 "\*  [^ ]*criterion::bencher::Bencher<M>::iter" |
        python3 -c '
import re, sys
lines = sys.stdin.read().splitlines()
total = int(lines[0].split()[0].replace(",", ""))
calls = next(int(m.group(1).replace(",", "")) for l in lines[1:]
             if (m := re.search(r"support::drain \(([0-9,]+)x\)", l)))
print(f"{sys.argv[1]:<55} {total // calls:>7} instructions/iteration")
' "$f"
done
