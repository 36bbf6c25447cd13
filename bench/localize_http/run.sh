#!/usr/bin/env bash
# Benchmark: `periscope localize` of a ~1 GB tar.gz served over HTTP from 127.0.0.1, against
# `curl URL | tar -xz`, the pipeline users would otherwise put in an initContainer.
#
# Both sides fetch the same file from the same local server (Python's http.server) and write to
# fresh folders on a tmpfs (when we may mount one), in alternation A B A B, so neither is favoured
# by a warm page cache or an ageing disk. Periscope additionally computes the sha256 of the whole
# download and checks every entry; curl | tar does neither. Prints each time, the medians and
# the ratio. Quote ratios from one run only: the machines are shared.
#
# Usage: bench/localize_http/run.sh [ROUNDS]
#   PERISCOPE_BIN  binary to use (default: build the release binary)
#   BENCH_DIR      work folder, reused across runs so the archive is made once (default: a temp dir)
#   SIZE_MB        approximate archive size (default 1024)
set -euo pipefail
rounds=${1:-3}
size_mb=${SIZE_MB:-1024}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${PERISCOPE_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release --bin periscope)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/periscope"
fi
work=${BENCH_DIR:-$(mktemp -d /tmp/periscope-bench.XXXXXX)}
mkdir -p "$work/srv"
archive="$work/srv/job.tar.gz"

if [ ! -f "$archive" ]; then
  echo "making a ~${size_mb} MB tar.gz in $work (once)"
  rm -rf "$work/src" && mkdir -p "$work/src/job/code" "$work/src/job/weights"
  # Code-like text (compressible, many small files) and weights (incompressible, a few large files).
  python3 - "$work/src/job" "$size_mb" <<'PY'
import os, sys
root, size_mb = sys.argv[1], int(sys.argv[2])
for i in range(2000):
    d = os.path.join(root, "code", f"pkg{i % 40}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"mod{i}.py"), "w") as f:
        f.write("".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(100)))
chunk = 64 << 20
left = size_mb << 20
n = 0
while left > 0:
    with open(os.path.join(root, "weights", f"shard{n:03d}.bin"), "wb") as f:
        f.write(os.urandom(min(chunk, left)))
    left -= chunk
    n += 1
PY
  tar -C "$work/src" -cf - job | gzip -1 > "$archive.tmp" && mv "$archive.tmp" "$archive"
  rm -rf "$work/src"
fi
echo "archive: $(du -m "$archive" | cut -f1) MB"

out="$work/out"
mkdir -p "$out"
mounted=0
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=$((size_mb * 3))m periscope-bench "$out" 2>/dev/null; then
  mounted=1
  echo "writing to a tmpfs at $out"
else
  echo "writing to fresh folders under $out (no tmpfs)"
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$work/srv" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  rm -rf "${out:?}"/* 2>/dev/null || true
  if [ "$mounted" = 1 ]; then umount "$out" || true; fi
}
trap cleanup EXIT
url="http://127.0.0.1:$port/job.tar.gz"
for _ in $(seq 50); do curl -sf -o /dev/null -r 0-0 "$url" && break; sleep 0.1; done

now() { date +%s.%N; }
a_times=()
b_times=()
for i in $(seq "$rounds"); do
  d="$out/a$i"
  t0=$(now)
  "$bin" localize --source "$url" --dest "$d" --termination-log /dev/null --log-level warn >/dev/null
  t1=$(now)
  a_times+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$d"

  d="$out/b$i"
  mkdir -p "$d"
  t0=$(now)
  curl -sSf "$url" | tar -xz -C "$d"
  t1=$(now)
  b_times+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$d"
  echo "round $i: periscope ${a_times[-1]}s  curl|tar ${b_times[-1]}s"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ma=$(median "${a_times[@]}")
mb=$(median "${b_times[@]}")
echo "median: periscope localize ${ma}s, curl | tar -xz ${mb}s"
echo "ratio periscope/curl|tar: $(echo "scale=2; $ma / $mb" | bc)  (below 1 means periscope is faster)"
