#!/usr/bin/env bash
# The secure path, start to finish, on this machine: a throw-away federation (its own CA) with
# three enrolled sites, each with its own file of synthetic bank messages; TLS, site keys,
# DP-SGD at every site and SecAgg+; two rounds on the embedded all-MiniLM-L6-v2.
# Every process started here is stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
fed="$run_dir/federation"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$run_dir"
echo "== provisioning a federation in $fed (CA, server certificate; 3 sites make their keys, 3 kits)"
fl-server init --dir "$fed" --host 127.0.0.1 --port "$port"
for site in A B C; do  # each site makes its key pair and hands over only the public half
  mkdir -p "$run_dir/site-keys"
  fl-client --make-key "$run_dir/site-keys/$site.key" >/dev/null
  fl-server enroll --dir "$fed" --site "$site" --public-key "$run_dir/site-keys/$site.key.pub" >/dev/null
done
echo "== writing demo data (3 sites x 240 messages, 4 topics) to $run_dir/site-data"
fl-demo-data --out "$run_dir/site-data" --sites 3 --per-site 240 >/dev/null

echo "== starting the coordinator: gateway on 127.0.0.1:$port (TLS), SuperLink on loopback"
fl-server --federation "$fed" --labels account,card,loan,transfer --rounds "$ROUNDS" --local-epochs 3 \
  --min-sites 3 --run-dir "$run_dir" &
server=$!
pids+=("$server")
for _ in $(seq 240); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit $?; }
  sleep 0.5
done

for site in A B C; do
  echo "== starting site $site with its kit (log: $run_dir/site-$site.log)"
  fl-client --kit "$fed/kits/$site" --key "$run_dir/site-keys/$site.key" --data "$run_dir/site-data/site-$site.tsv" \
    >"$run_dir/site-$site.log" 2>&1 &
  pids+=("$!")
done

status=0
wait "$server" || status=$?
if [ "$status" -eq 0 ]; then
  echo "== model card: $run_dir/MODEL_CARD.md; audit: fl-audit verify $run_dir/audit.jsonl --key $fed/server-audit.key.pub"
  echo "== try the model: fl-predict $run_dir --text 'my card was declined'"
fi
exit "$status"
