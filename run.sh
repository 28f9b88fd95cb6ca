#!/usr/bin/env bash
# Set up (first run) and run kvstore.
#   ./run.sh                 one node: gRPC 127.0.0.1:2379, peers :2380, HTTP :2378, data ./default.kvstore
#   ./run.sh --cluster 3     a local 3-node cluster (gRPC 2379/22379/32379, HTTP 2378/22378/32378)
#   ./run.sh [kvstore flags] one node with etcd-style flags (see: ./run.sh --help)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
fi
PY=.venv/bin/python
if [ "${1:-}" != "--cluster" ]; then
  exec "$PY" -m kvstore "$@"
fi
n="${2:-3}"
cluster=""
for i in $(seq 1 "$n"); do
  p=$((i == 1 ? 2380 : i * 10000 + 2380))
  cluster="${cluster:+$cluster,}n$i=http://127.0.0.1:$p"
done
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in $(seq 1 "$n"); do
  off=$((i == 1 ? 0 : i * 10000))
  "$PY" -m kvstore --name "n$i" --data-dir "n$i.kvstore" \
    --listen-client-urls "http://127.0.0.1:$((2379 + off))" --advertise-client-urls "http://127.0.0.1:$((2379 + off))" \
    --listen-peer-urls "http://127.0.0.1:$((2380 + off))" --initial-advertise-peer-urls "http://127.0.0.1:$((2380 + off))" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --listen-client-http-urls "http://127.0.0.1:$((2378 + off))" &
  pids+=($!)
done
echo "kvstore: $n nodes running (Ctrl-C stops them); try: ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 put foo bar" >&2
wait
