# Sourced by the S3 benchmarks: starts the S3-compatible server chosen by SERVER on a free port of
# 127.0.0.1, with a bucket `bench`, and points the AWS CLI, rclone (remote `bench:`) and Periscope
# at it. Needs $work (removed on exit), $target, $venv and $aws_cli to be set by the caller.
#   SERVER=moto    (default) moto_server from the test venv. It reads a whole object for every
#                  ranged GET, so it favours tools that fetch a large object in few ranges.
#   SERVER=s3s-fs  s3s-fs, a Rust S3 server on a folder (installed into target/bench-tools on
#                  first use), which serves ranges as real stores do.
SERVER=${SERVER:-moto}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
case "$SERVER" in
  moto)
    setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/server.log" 2>&1 & ;;
  s3s-fs)
    s3s_fs="$target/bench-tools/bin/s3s-fs"
    [ -x "$s3s_fs" ] || cargo install s3s-fs@0.14.1 --locked --features binary --root "$target/bench-tools"
    mkdir -p "$work/s3/bench"
    setsid "$s3s_fs" --host 127.0.0.1 --port "$port" --access-key bench --secret-key benchbench \
      "$work/s3" >"$work/server.log" 2>&1 & ;;
  *) echo "SERVER must be moto or s3s-fs" >&2; exit 2 ;;
esac
server_pid=$!
cleanup() { kill -- -"$server_pid" 2>/dev/null || kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
until curl -s "http://127.0.0.1:$port/" >/dev/null; do sleep 0.2; done

export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchbench \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other \
  RCLONE_CONFIG_BENCH_ENDPOINT="$AWS_ENDPOINT_URL" RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=bench \
  RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=benchbench RCLONE_CONFIG_BENCH_REGION=us-east-1
# s3s-fs's bucket is the folder made above; moto needs it created.
[ "$SERVER" = s3s-fs ] || "$aws_cli" s3 mb s3://bench >/dev/null
