#!/usr/bin/env bash
# User-space instructions per proxied request, haltgate against nginx, counted by callgrind.
#
# Instruction counts do not move with the machine's load the way CPU time does, so they compare
# two builds (or haltgate and nginx) exactly; the kernel's share (sockets, wake-ups) is not in
# them. Both proxies forward the same keep-alive POSTs, one at a time, to an nginx that answers
# a 1 KB Slack-like JSON body; counting starts after a warm-up and covers N requests.
#
#   benches/instructions.sh [HALTGATE_BINARY] [N]
#
# Needs valgrind, nginx, curl and python3. Default binary: target/release/haltgate.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "${1:-target/release/haltgate}")
n=${2:-1000}
work=$(realpath -m target/instructions)
rules=$(realpath rules)
rm -rf "$work" && mkdir -p "$work"/{upstream,nginx,haltgate}
for tool in valgrind nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is not installed" >&2; exit 2; }
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upstream_port=$(free_port); nginx_port=$(free_port); agent_port=$(free_port); control_port=$(free_port)

temp_paths() {
    local d=$1
    echo "client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fcgi; uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;"
}
body=$(python3 -c 'print("{\"ok\":true,\"channel\":\"C0123ABCD\",\"ts\":\"1700000000.000100\",\"message\":{\"type\":\"message\",\"text\":\"" + "x"*900 + "\",\"user\":\"U0123\",\"bot_id\":\"B0123\"}}")')
cat > "$work/upstream/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/upstream/pid; error_log $work/upstream/error.log warn;
events { worker_connections 1024; }
http { access_log off; $(temp_paths "$work/upstream") keepalive_requests 10000000;
  server { listen 127.0.0.1:$upstream_port; default_type application/json; location / { return 200 '$body'; } } }
CONF
cat > "$work/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/nginx/pid; error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http { access_log off; $(temp_paths "$work/nginx") keepalive_requests 10000000;
  upstream slack { server 127.0.0.1:$upstream_port; keepalive 64; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$nginx_port; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;
    location /slack/ { proxy_pass http://slack/; } } }
CONF
cat > "$work/drive.py" <<'PY'
import http.client, json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
body = json.dumps({"channel": "C0123ABCD", "text": "hello"})
headers = {"authorization": "Bearer xoxb-REDACTED-instructions", "x-haltgate-session": "instructions-1",
           "content-type": "application/json"}
for _ in range(n):
    conn.request("POST", "/slack/api/chat.postMessage", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"answer {response.status}")
PY

children=()
stop_children() {
    for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_children EXIT
nginx -c "$work/upstream/nginx.conf" & children+=($!)

# count NAME PORT READY_URL COMMAND...: runs COMMAND under callgrind, counts N requests.
count() {
    local name=$1 port=$2 ready=$3; shift 3
    # From its own directory: haltgate keeps its last good rules beside where it runs.
    (cd "$work/$name" && exec valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$work/$name.callgrind.%p" "$@" > "$work/$name.log" 2>&1) &
    local pid=$!
    children+=("$pid")
    for _ in $(seq 1 600); do curl -s -o /dev/null "$ready" && break; sleep 0.2; done
    python3 "$work/drive.py" 50 "$port"
    callgrind_control -i on "$pid" >/dev/null
    python3 "$work/drive.py" "$n" "$port"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    local total
    total=$(cat "$work/$name".callgrind.* | awk '/^totals:/ {s += $2} END {print s}')
    echo "$name: $((total / n)) instructions per request (N=$n; $work/$name.callgrind.*)"
}

count haltgate "$agent_port" "http://127.0.0.1:$control_port/readyz" \
    "$binary" serve --rules "$rules" --store "redb:$work/haltgate/state.redb" \
    --listen "127.0.0.1:$agent_port" --control-listen "127.0.0.1:$control_port" \
    --route "slack=http://127.0.0.1:$upstream_port"
count nginx "$nginx_port" "http://127.0.0.1:$nginx_port/slack/" nginx -c "$work/nginx/nginx.conf"
