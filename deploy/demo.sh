#!/usr/bin/env bash
# A whole federation on this machine: one coordinator and three sites on 127.0.0.1, each site
# with its own file of synthetic bank messages, two rounds on the embedded all-MiniLM-L6-v2.
# Every process started here is stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
work=$(mktemp -d "${TMPDIR:-/tmp}/fedsilo-demo.XXXXXX")
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== writing demo data (3 sites x 240 messages, 4 topics) to $work/data"
fl-demo-data --out "$work/data" --sites 3 --per-site 240 >/dev/null

echo "== starting the coordinator on 127.0.0.1:$port (run directory $run_dir)"
fl-server --insecure --port "$port" --labels account,card,loan,transfer --rounds "$ROUNDS" --local-epochs 3 \
  --min-sites 3 --run-dir "$run_dir" &
server=$!
pids+=("$server")
for _ in $(seq 120); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit $?; }
  sleep 0.5
done

for site in A B C; do
  echo "== starting site $site (logs: $run_dir/site-$site.log)"
  fl-client --site "$site" --data "$work/data/site-$site.tsv" --server "127.0.0.1:$port" \
    --insecure >"$run_dir/site-$site.log" 2>&1 &
  pids+=("$!")
done

status=0
wait "$server" || status=$?
if [ "$status" -eq 0 ]; then
  echo "== try the model: fl-predict $run_dir --text 'my card was declined'"
fi
exit "$status"
