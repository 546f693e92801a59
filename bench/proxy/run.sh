#!/usr/bin/env bash
# Proxy benchmark: nginx, HAProxy and `gauntlet proxy` in front of the same fast two-revision
# backend with the same 90/10 weighted split, one proxy at a time, proxy pinned to one core and
# wrk to another. Prints requests/s, p50, p99, the proxy's CPU use and peak resident memory, and
# Gauntlet's ratios to nginx and HAProxy. Traffic stays on 127.0.0.1. Nothing is written to the
# repository; scratch files live in a temporary directory removed on exit.
#
# Environment knobs (defaults in brackets):
#   DURATION [10s]  CONNECTIONS [64]  WARMUP [3s]  VERIFY_REQUESTS [2000]
#   ROUNDS [3]       each round runs the three proxies once, in a rotated order, so a machine
#                    whose speed drifts during the run (other tenants, thermal) weighs on each
#                    proxy alike; the summary gives each proxy's median over the rounds and
#                    Gauntlet's ratio in every round
#   PROXY_CPU [0]  LOAD_CPU [1]  BACKEND_CPU [same as LOAD_CPU]
#   BACKEND [nginx]  nginx (static `return 200` on two ports) or demo-app (two `gauntlet demo-app`)
#   SKIP_BUILD [0]   1 to use the gauntlet binary as it is
#   GAUNTLET [target/release/gauntlet]  the gauntlet binary to run (its build is skipped when set)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-3s}
VERIFY_REQUESTS=${VERIFY_REQUESTS:-2000}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BACKEND_CPU=${BACKEND_CPU:-$LOAD_CPU}
BACKEND=${BACKEND:-nginx}
SKIP_BUILD=${SKIP_BUILD:-0}

V1_PORT=18181
V2_PORT=18182
NGINX_PORT=18190
HAPROXY_PORT=18191
GAUNTLET_PORT=18192
GAUNTLET_ADMIN=18171
STATUS_PORT=18183

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------------------------

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
for tool in taskset curl; do command -v "$tool" >/dev/null 2>&1 || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
    # taskset is in util-linux
    pkgs=("${need[@]/taskset/util-linux}")
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null; then
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
fi
export PATH="$PATH:/usr/sbin:/sbin"
[ "$(nproc)" -ge 2 ] || die "needs at least two CPUs (proxy and load generator on separate cores)"

if [ -z "${GAUNTLET:-}" ] && [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release -p gauntlet"
    (cd "$ROOT" && cargo build --release -q -p gauntlet)
fi
GAUNTLET=${GAUNTLET:-$ROOT/target/release/gauntlet}
[ -x "$GAUNTLET" ] || die "$GAUNTLET is missing"

# --- process bookkeeping -----------------------------------------------------------------------

WORK=$(mktemp -d /tmp/gauntlet-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stops one process started here (and forgets it).
stop() {
    local pid=$1 keep=() p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# Waits (bounded, 10 s) until something answers HTTP on 127.0.0.1:$1.
wait_http() {
    local port=$1
    for _ in $(seq 1 100); do
        curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && return 0
        sleep 0.1
    done
    die "nothing answers on 127.0.0.1:$port"
}

# Peak resident memory (VmHWM, kB) of a process and its children, summed.
peak_kb() {
    local pid=$1 total=0 p kb
    for p in "$pid" $(pgrep -P "$pid" || true); do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# CPU ticks (utime + stime) of a process and its children.
cpu_ticks() {
    local pid=$1 total=0 p t
    for p in "$pid" $(pgrep -P "$pid" || true); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

# CPU ticks of a process and its children: "user system".
cpu_split() {
    local pid=$1 user=0 system=0 p u st
    for p in "$pid" $(pgrep -P "$pid" || true); do
        read -r u st < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
        user=$((user + ${u:-0}))
        system=$((system + ${st:-0}))
    done
    echo "$user $system"
}

# wrk latency figure ("355.00us", "1.20ms", "2.00s") in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# --- backend: two revisions answering "v1" and "v2" --------------------------------------------

start_backend() {
    case "$BACKEND" in
    nginx)
        mkdir -p "$WORK/backend"
        cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server { listen 127.0.0.1:$V1_PORT; location / { return 200 "v1\n"; } }
    server { listen 127.0.0.1:$V2_PORT; location / { return 200 "v2\n"; } }
    server { listen 127.0.0.1:$STATUS_PORT; location / { stub_status; } }
}
EOF
        taskset -c "$BACKEND_CPU" nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf" \
            >"$WORK/backend/out.log" 2>&1 &
        PIDS+=($!)
        ;;
    demo-app)
        taskset -c "$BACKEND_CPU" "$GAUNTLET" demo-app --listen "127.0.0.1:$V1_PORT" --version v1 \
            >"$WORK/v1.log" 2>&1 &
        PIDS+=($!)
        taskset -c "$BACKEND_CPU" "$GAUNTLET" demo-app --listen "127.0.0.1:$V2_PORT" --version v2 \
            >"$WORK/v2.log" 2>&1 &
        PIDS+=($!)
        ;;
    *) die "BACKEND is nginx or demo-app" ;;
    esac
    wait_http "$V1_PORT"
    wait_http "$V2_PORT"
}

# --- proxies -----------------------------------------------------------------------------------

# Each start_* starts one proxy pinned to PROXY_CPU, sets PROXY_PID and PROXY_PORT.

start_nginx() {
    mkdir -p "$WORK/nginx"
    # split_clients over $request_id (random per request) is a per-request 90/10 draw, as
    # Gauntlet's; upstream keep-alive with HTTP/1.1 and no client-side request cap per connection.
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream v1 { server 127.0.0.1:$V1_PORT; keepalive 128; keepalive_requests 1000000; }
    upstream v2 { server 127.0.0.1:$V2_PORT; keepalive 128; keepalive_requests 1000000; }
    split_clients "\${request_id}" \$revision {
        90% v1;
        *   v2;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://\$revision;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
    taskset -c "$PROXY_CPU" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
        >"$WORK/nginx/out.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    PROXY_PORT=$NGINX_PORT
}

start_haproxy() {
    mkdir -p "$WORK/haproxy"
    cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend revisions
backend revisions
    balance roundrobin
    server v1 127.0.0.1:$V1_PORT weight 90
    server v2 127.0.0.1:$V2_PORT weight 10
EOF
    taskset -c "$PROXY_CPU" haproxy -db -f "$WORK/haproxy/haproxy.cfg" \
        >"$WORK/haproxy/out.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    PROXY_PORT=$HAPROXY_PORT
}

start_gauntlet() {
    mkdir -p "$WORK/gauntlet/state"
    local token
    token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$token" >"$WORK/gauntlet/token"
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$GAUNTLET" --state-dir "$WORK/gauntlet/state" proxy \
        --admin "127.0.0.1:$GAUNTLET_ADMIN" --token-file "$WORK/gauntlet/token" --workers 1 \
        >"$WORK/gauntlet/out.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    PROXY_PORT=$GAUNTLET_PORT
    local up=0
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null --max-time 1 -H "Authorization: Bearer $token" \
            "http://127.0.0.1:$GAUNTLET_ADMIN/admin/v1/config"; then up=1; break; fi
        sleep 0.1
    done
    [ "$up" = 1 ] || die "gauntlet proxy's admin API did not come up: $(cat "$WORK/gauntlet/out.log")"
    cat >"$WORK/gauntlet/config.json" <<EOF
{"version": 1, "apps": [{
  "name": "bench", "listen": "127.0.0.1:$GAUNTLET_PORT",
  "revisions": [
    {"name": "v1", "weight": 9000, "endpoints": [{"addr": "127.0.0.1:$V1_PORT"}]},
    {"name": "v2", "weight": 1000, "endpoints": [{"addr": "127.0.0.1:$V2_PORT"}]}
  ]}]}
EOF
    curl -fsS --max-time 5 -X PUT -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' --data-binary "@$WORK/gauntlet/config.json" \
        "http://127.0.0.1:$GAUNTLET_ADMIN/admin/v1/config" >"$WORK/gauntlet/put.json" \
        || die "pushing the configuration failed"
}

# --- measuring ---------------------------------------------------------------------------------

# Counts response bodies over VERIFY_REQUESTS requests (one curl, keep-alive, URL globbing).
verify_split() {
    local port=$1 counts v1 v2
    counts=$(curl -s --max-time 60 "http://127.0.0.1:$port/?n=[1-$VERIFY_REQUESTS]" | sort | uniq -c)
    v1=$(awk '$2 == "v1" {print $1}' <<<"$counts")
    v2=$(awk '$2 == "v2" {print $1}' <<<"$counts")
    v1=${v1:-0}
    v2=${v2:-0}
    [ $((v1 + v2)) -eq "$VERIFY_REQUESTS" ] || die "split check on :$port: $counts"
    awk -v a="$v1" -v b="$v2" 'BEGIN { printf "%d/%d (%.1f%% v2)", a, b, 100 * b / (a + b) }'
}

declare -A RPS P50 P99 MEM CPU SPLIT CONNS USR SYS

# Connections the nginx backend has accepted so far (its stub_status, this query included), or
# "-" for demo-app.
backend_accepts() {
    if [ "$BACKEND" = nginx ]; then
        curl -fs --max-time 2 "http://127.0.0.1:$STATUS_PORT/" | awk 'NR == 3 {print $1}'
    else
        echo -
    fi
}

run_wrk() { taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$1" --latency "http://127.0.0.1:$2/"; }

measure() {
    local name=$1 out t0 t1 hz secs a0 a1 u0 s0 u1 s1 n
    "start_$name"
    wait_http "$PROXY_PORT"
    SPLIT[$name]=$(verify_split "$PROXY_PORT")
    log "$name: split v1/v2 ${SPLIT[$name]}; warming up $WARMUP"
    run_wrk "$WARMUP" "$PROXY_PORT" >/dev/null
    log "$name: wrk -t1 -c$CONNECTIONS -d$DURATION --latency"
    a0=$(backend_accepts)
    t0=$(cpu_ticks "$PROXY_PID")
    read -r u0 s0 < <(cpu_split "$PROXY_PID")
    out=$(run_wrk "$DURATION" "$PROXY_PORT")
    read -r u1 s1 < <(cpu_split "$PROXY_PID")
    t1=$(cpu_ticks "$PROXY_PID")
    a1=$(backend_accepts)
    if [ "$a0" = - ]; then CONNS[$name]=-; else CONNS[$name]=$((a1 - a0 - 1)); fi
    printf '%s\n' "$out" >"$WORK/$name.wrk"
    if grep -q 'Non-2xx\|Socket errors' <<<"$out"; then
        log "$name: wrk reported errors:"; grep 'Non-2xx\|Socket errors' <<<"$out" >&2
    fi
    RPS[$name]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    P50[$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    P99[$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    MEM[$name]=$(peak_kb "$PROXY_PID")
    hz=$(getconf CLK_TCK)
    secs=$(to_ms "$DURATION")
    # CPU time per request, user and system: what the proxy spends on one request whatever
    # else the machine does, so it varies far less from one run to the next than requests/s.
    n=$(awk '/requests in/ {print $1; exit}' <<<"$out")
    USR[$name]=$(awk -v d=$((u1 - u0)) -v hz="$hz" -v n="${n:-0}" 'BEGIN { printf "%.2f", (n > 0 ? 1e6 * d / hz / n : 0) }')
    SYS[$name]=$(awk -v d=$((s1 - s0)) -v hz="$hz" -v n="${n:-0}" 'BEGIN { printf "%.2f", (n > 0 ? 1e6 * d / hz / n : 0) }')
    CPU[$name]=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v ms="$secs" 'BEGIN { printf "%.0f", 100 * d / hz / (ms / 1000) }')
    stop "$PROXY_PID"
}

# --- run ---------------------------------------------------------------------------------------

log "backend: $BACKEND on CPU $BACKEND_CPU (v1 :$V1_PORT, v2 :$V2_PORT)"
start_backend
# The backend alone, as wrk sees it through no proxy: the ceiling of this setup.
BACKEND_RPS=$(run_wrk "$WARMUP" "$V1_PORT" | awk '/^Requests\/sec:/ {printf "%.0f", $2}')
log "backend alone (wrk and backend sharing CPU $LOAD_CPU): $BACKEND_RPS req/s"

PROXIES=(nginx haproxy gauntlet)
declare -A ALL_RPS ALL_P50 ALL_P99 ALL_USR ALL_SYS
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order: round 1 nginx first, round 2 haproxy first, round 3 gauntlet first...
    shift_by=$(((round - 1) % 3))
    order=("${PROXIES[@]:$shift_by}" "${PROXIES[@]:0:$shift_by}")
    log "round $round of $ROUNDS: ${order[*]}"
    for proxy in "${order[@]}"; do
        measure "$proxy"
        ALL_RPS[$proxy]+="${RPS[$proxy]} "
        ALL_P50[$proxy]+="${P50[$proxy]} "
        ALL_P99[$proxy]+="${P99[$proxy]} "
        ALL_USR[$proxy]+="${USR[$proxy]} "
        ALL_SYS[$proxy]+="${SYS[$proxy]} "
    done
    printf 'round %d: requests/s nginx %s, haproxy %s, gauntlet %s; gauntlet/nginx %s, gauntlet/haproxy %s\n' \
        "$round" "${RPS[nginx]}" "${RPS[haproxy]}" "${RPS[gauntlet]}" \
        "$(awk -v g="${RPS[gauntlet]}" -v o="${RPS[nginx]}" 'BEGIN { printf "%.2fx", g / o }')" \
        "$(awk -v g="${RPS[gauntlet]}" -v o="${RPS[haproxy]}" 'BEGIN { printf "%.2fx", g / o }')" \
        >>"$WORK/rounds.txt"
    printf '         CPU us/request (user+system) nginx %s, haproxy %s, gauntlet %s; gauntlet/nginx %s, gauntlet/haproxy %s\n' \
        "$(awk -v u="${USR[nginx]}" -v s="${SYS[nginx]}" 'BEGIN { printf "%.2f+%.2f", u, s }')" \
        "$(awk -v u="${USR[haproxy]}" -v s="${SYS[haproxy]}" 'BEGIN { printf "%.2f+%.2f", u, s }')" \
        "$(awk -v u="${USR[gauntlet]}" -v s="${SYS[gauntlet]}" 'BEGIN { printf "%.2f+%.2f", u, s }')" \
        "$(awk -v a="${USR[gauntlet]}" -v b="${SYS[gauntlet]}" -v c="${USR[nginx]}" -v d="${SYS[nginx]}" 'BEGIN { printf "%.2fx", (a + b) / (c + d) }')" \
        "$(awk -v a="${USR[gauntlet]}" -v b="${SYS[gauntlet]}" -v c="${USR[haproxy]}" -v d="${SYS[haproxy]}" 'BEGIN { printf "%.2fx", (a + b) / (c + d) }')" \
        >>"$WORK/rounds.txt"
done

# The median of a list of numbers.
median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for proxy in "${PROXIES[@]}"; do
    RPS[$proxy]=$(median "${ALL_RPS[$proxy]}")
    P50[$proxy]=$(median "${ALL_P50[$proxy]}")
    P99[$proxy]=$(median "${ALL_P99[$proxy]}")
    USR[$proxy]=$(median "${ALL_USR[$proxy]}")
    SYS[$proxy]=$(median "${ALL_SYS[$proxy]}")
done

echo
echo "proxy benchmark: wrk -t1 -c$CONNECTIONS -d$DURATION --latency; proxy on CPU $PROXY_CPU," \
    "wrk on CPU $LOAD_CPU, backend ($BACKEND, v1/v2) on CPU $BACKEND_CPU; 90/10 split; $ROUNDS rounds"
echo "versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>/dev/null | head -1 | awk '{print "HAProxy " $3}'), gauntlet $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(wrk -v 2>&1 | head -1 | awk '{print $1 " " $2}')"
echo "backend alone: $BACKEND_RPS req/s"
echo
cat "$WORK/rounds.txt"
echo
echo "medians over the rounds (CPU, memory, connections and split: the last round)"
printf '%-10s %12s %10s %10s %9s %13s %11s %9s  %s\n' proxy "requests/s" "p50 ms" "p99 ms" "proxy CPU" "us/req usr+sys" "peak RSS MB" "upstr.conn" "split v1/v2 (check)"
for proxy in "${PROXIES[@]}"; do
    printf '%-10s %12s %10s %10s %8s%% %14s %11s %9s  %s\n' "$proxy" "${RPS[$proxy]}" "${P50[$proxy]}" \
        "${P99[$proxy]}" "${CPU[$proxy]}" "${USR[$proxy]}+${SYS[$proxy]}" "$(awk -v k="${MEM[$proxy]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
        "${CONNS[$proxy]}" "${SPLIT[$proxy]}"
done
echo
for other in nginx haproxy; do
    awk -v g="${RPS[gauntlet]}" -v o="${RPS[$other]}" -v gp="${P99[gauntlet]}" -v op="${P99[$other]}" \
        -v gm="${MEM[gauntlet]}" -v om="${MEM[$other]}" -v name="$other" \
        -v gc="$(awk -v u="${USR[gauntlet]}" -v s="${SYS[gauntlet]}" 'BEGIN { print u + s }')" \
        -v oc="$(awk -v u="${USR[$other]}" -v s="${SYS[$other]}" 'BEGIN { print u + s }')" 'BEGIN {
        printf "gauntlet / %-8s throughput %.2fx   p99 %.2fx (lower is better)   memory %.2fx   CPU per request %.2fx (lower is better)\n",
            name, g / o, (op > 0 ? gp / op : 0), (om > 0 ? gm / om : 0), (oc > 0 ? gc / oc : 0) }'
done
echo "targets: throughput >= 1.0x both, p99 no worse, gauntlet peak RSS < 30 MB ($(awk -v k="${MEM[gauntlet]}" 'BEGIN { printf "%.1f", k / 1024 }') MB)"
