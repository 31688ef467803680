#!/usr/bin/env bash
# The team's MLflow tracking server: every pipeline job (on any node) logs to it over HTTP, so no job writes
# the SQLite file store (see docs/tracking-server.md). Runs `mlflow server` in the foreground until stopped.
#
#   scripts/mlflow-server.sh                      # this machine only: 127.0.0.1:5000, SQLite + folder in ./mlflow-server
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:...@db.example.org/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlflow MLFLOW_SERVER_HOST=0.0.0.0 scripts/mlflow-server.sh
#
# Settings (environment variables; the command-line options of `mlflow server` after the script's own
# arguments are passed on unchanged, e.g. `scripts/mlflow-server.sh --app-name basic-auth` for logins):
#   MLFLOW_SERVER_DIR             folder for the defaults below        (default: ./mlflow-server)
#   MLFLOW_BACKEND_STORE_URI      runs, params, metrics: a SQLAlchemy URI. PostgreSQL or MySQL for a team;
#                                 SQLite only on the server's local disk, written by this one server process
#                                 (default: sqlite:///$MLFLOW_SERVER_DIR/mlflow-server.db)
#   MLFLOW_ARTIFACTS_DESTINATION  where uploaded artifacts are kept: a folder (a shared one, or the server's
#                                 disk) or s3://... (default: $MLFLOW_SERVER_DIR/artifacts). Clients upload
#                                 through the server (--serve-artifacts), so jobs need no access to it.
#   MLFLOW_SERVER_HOST            interface to bind: 127.0.0.1 (this machine only) or 0.0.0.0 (other nodes)
#                                 (default: 127.0.0.1)
#   MLFLOW_SERVER_PORT            (default: 5000)
#   MLFLOW_SERVER_WORKERS         server processes (default: 1 with SQLite, 4 otherwise)
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers accepted (MLflow's --allowed-hosts; its default accepts
#                                 localhost and private IPs only). Default: those and this host's name
#                                 and FQDN, so that jobs on other nodes may address it by name.
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's background job workers (GenAI scorers, trace roll-ups: seven
#                                 more processes); medti does not use them (default: false)
#   MLFLOW_SERVER_URI_FILE        if set, the tracking URI is also written to this file (scripts/mlflow-server.sbatch)
#   MLFLOW                        the mlflow command (default: mlflow on PATH, else .venv/bin/mlflow)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${MLFLOW_SERVER_DIR:-$PWD/mlflow-server}"
host="${MLFLOW_SERVER_HOST:-127.0.0.1}"
port="${MLFLOW_SERVER_PORT:-5000}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$dir/mlflow-server.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$dir/artifacts}"

if [[ -n "${MLFLOW:-}" ]]; then
    mlflow_cmd="$MLFLOW"
elif command -v mlflow >/dev/null 2>&1; then
    mlflow_cmd="$(command -v mlflow)"
elif [[ -x "$root/.venv/bin/mlflow" ]]; then
    mlflow_cmd="$root/.venv/bin/mlflow"
else
    echo "mlflow-server.sh: no mlflow command (install medti, or set MLFLOW=/path/to/mlflow)" >&2
    exit 2
fi

case "$backend" in
    sqlite:*)
        workers="${MLFLOW_SERVER_WORKERS:-1}"
        db="${backend#sqlite:///}"; db="${db%%\?*}"
        mkdir -p "$(dirname "$db")"
        # SQLite's locking is not reliable on network filesystems (NFS, Lustre, GPFS): keep the file on
        # the server's local disk and let only this server write it.
        fstype="$(stat -f -c %T "$(dirname "$db")" 2>/dev/null || true)"
        case "$fstype" in
            nfs*|lustre|gpfs|cifs|smb*|fuse*|ceph)
                echo "mlflow-server.sh: warning: $db is on a $fstype filesystem; SQLite is unsafe there" \
                     "- put it on local disk or use PostgreSQL/MySQL (docs/tracking-server.md)" >&2 ;;
        esac
        if [[ "$workers" != 1 ]]; then
            echo "mlflow-server.sh: warning: $workers server processes writing one SQLite file;" \
                 "use MLFLOW_SERVER_WORKERS=1 or PostgreSQL/MySQL" >&2
        fi ;;
    *) workers="${MLFLOW_SERVER_WORKERS:-4}" ;;
esac
case "$artifacts" in
    *://*) ;;
    *) mkdir -p "$artifacts"; artifacts="$(cd "$artifacts" && pwd)" ;;
esac

# MLflow's own default starts the job workers; medti logs runs, metrics and artifacts only.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

name="$(hostname 2>/dev/null || echo localhost)"
fqdn="$(hostname -f 2>/dev/null || echo "$name")"
private="10.*,192.168.*$(for i in $(seq 16 31); do printf ',172.%s.*' "$i"; done)"
allowed="${MLFLOW_SERVER_ALLOWED_HOSTS:-$name,$name:*,$fqdn,$fqdn:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*,$private}"

case "$host" in
    127.0.0.1|localhost) uri_host="$host" ;;
    0.0.0.0|::) uri_host="$fqdn" ;;
    *) uri_host="$host" ;;
esac
case "$backend" in
    sqlite:*) shown="$backend" ;;
    *) shown="${backend%%://*}://..." ;;  # never a database password in the log
esac
echo "MLflow tracking server: backend $shown, artifacts $artifacts, $workers worker(s)" >&2
echo "jobs log here after:  export MLFLOW_TRACKING_URI=http://$uri_host:$port" >&2
if [[ -n "${MLFLOW_SERVER_URI_FILE:-}" ]]; then
    mkdir -p "$(dirname "$MLFLOW_SERVER_URI_FILE")"
    echo "http://$uri_host:$port" > "$MLFLOW_SERVER_URI_FILE"
fi

exec "$mlflow_cmd" server \
    --backend-store-uri "$backend" \
    --serve-artifacts --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" --workers "$workers" \
    --allowed-hosts "$allowed" \
    "$@"
