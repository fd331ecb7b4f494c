#!/usr/bin/env bash
# shellcheck shell=bash
#
# Make sure Redis and PostgreSQL answer for local development and tests.
#
#   source scripts/services.sh && ensure_services   # from scripts/run, scripts/test
#   bash scripts/services.sh                        # same, standalone
#   bash scripts/services.sh stop                   # stop private services started here
#
# Inputs (environment):
#   REDIS_URL     default redis://127.0.0.1:6379
#   DATABASE_URL  default postgres://postgres@127.0.0.1:5432/flashsale
#
# For each service, in order: use what already answers at the URL; else start
# a private instance under <project>/.dev (loopback hosts only); else, when
# root with apt-get, install the packages and start the private instance;
# else explain what to install and fail.
#
# Safe to source: defines functions only, never exits the caller's shell and
# keeps its shell options local to its functions (works under `set -euo pipefail`).

_SVC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
_SVC_PG_FALLBACK_DIR=/var/tmp/flashsale-dev/pg
_SVC_DEFAULT_REDIS_URL='redis://127.0.0.1:6379'
_SVC_DEFAULT_DATABASE_URL='postgres://postgres@127.0.0.1:5432/flashsale'

# ---------------------------------------------------------------- helpers --

_svc_log() { printf 'services: %s\n' "$*" >&2; }

_svc_have() { command -v "$1" >/dev/null 2>&1; }

_svc_is_root() { [[ ${EUID:-$(id -u)} -eq 0 ]]; }

# localhost and 127.0.0.0/8 count as loopback (private instances bind 127.0.0.1).
_svc_is_loopback() {
    case "$1" in
        localhost | 127.*) return 0 ;;
        *) return 1 ;;
    esac
}

# Decode %XX escapes of a URL component.
_svc_urldecode() {
    local s="${1//+/ }"
    printf '%b' "${s//%/\\x}"
}

# Run a command with a time limit when `timeout` exists.
_svc_timeout() {
    local secs="$1"
    shift
    if _svc_have timeout; then
        timeout "$secs" "$@"
    else
        "$@"
    fi
}

# Is something listening at host:port (TCP)?
_svc_tcp_open() {
    # shellcheck disable=SC2016  # $1/$2 expand in the child bash
    _svc_timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Wait (up to $1 seconds) until the command "$2..." succeeds.
_svc_wait_for() {
    local secs="$1" i
    shift
    for ((i = 0; i < secs * 4; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.25
    done
    "$@"
}

# apt-get install, running `apt-get update` only once per shell.
_svc_apt_install() {
    if ! _svc_is_root || ! _svc_have apt-get; then
        return 1
    fi
    if [[ -z ${_SVC_APT_UPDATED:-} ]]; then
        _svc_log "running apt-get update"
        if ! apt-get -o DPkg::Lock::Timeout=120 update >&2; then
            _svc_log "apt-get update failed"
            return 1
        fi
        _SVC_APT_UPDATED=1
    fi
    _svc_log "installing $* with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y "$@" >&2; then
        _svc_log "apt-get install $* failed"
        return 1
    fi
}

# -------------------------------------------------------------- URL parsing --

# Sets _SVC_REDIS_HOST, _SVC_REDIS_PORT, _SVC_REDIS_PASS from $1.
_svc_parse_redis_url() {
    local rest="$1" userinfo=""
    rest="${rest#*://}"
    rest="${rest%%\?*}"
    rest="${rest%%/*}"
    if [[ $rest == *@* ]]; then
        userinfo="${rest%@*}"
        rest="${rest##*@}"
    fi
    _SVC_REDIS_PASS=""
    if [[ $userinfo == *:* ]]; then
        _SVC_REDIS_PASS="$(_svc_urldecode "${userinfo#*:}")"
    fi
    _SVC_REDIS_HOST="${rest%%:*}"
    _SVC_REDIS_PORT=""
    if [[ $rest == *:* ]]; then
        _SVC_REDIS_PORT="${rest##*:}"
    fi
    _SVC_REDIS_HOST="${_SVC_REDIS_HOST:-127.0.0.1}"
    _SVC_REDIS_PORT="${_SVC_REDIS_PORT:-6379}"
    if [[ ! $_SVC_REDIS_PORT =~ ^[0-9]+$ ]]; then
        _svc_log "cannot parse a port out of REDIS_URL (expected redis://host:port[/db])"
        return 1
    fi
}

# Sets _SVC_PG_USER, _SVC_PG_PASS, _SVC_PG_HOST, _SVC_PG_PORT, _SVC_PG_DB from $1.
_svc_parse_pg_url() {
    local rest="$1" userinfo="" hostport
    rest="${rest#*://}"
    rest="${rest%%\?*}"
    if [[ $rest == */* ]]; then
        hostport="${rest%%/*}"
        _SVC_PG_DB="${rest#*/}"
    else
        hostport="$rest"
        _SVC_PG_DB=""
    fi
    if [[ $hostport == *@* ]]; then
        userinfo="${hostport%@*}"
        hostport="${hostport##*@}"
    fi
    _SVC_PG_USER="${userinfo%%:*}"
    _SVC_PG_PASS=""
    if [[ $userinfo == *:* ]]; then
        _SVC_PG_PASS="$(_svc_urldecode "${userinfo#*:}")"
    fi
    _SVC_PG_USER="$(_svc_urldecode "${_SVC_PG_USER:-postgres}")"
    _SVC_PG_DB="$(_svc_urldecode "${_SVC_PG_DB:-flashsale}")"
    _SVC_PG_HOST="${hostport%%:*}"
    _SVC_PG_PORT=""
    if [[ $hostport == *:* ]]; then
        _SVC_PG_PORT="${hostport##*:}"
    fi
    _SVC_PG_HOST="${_SVC_PG_HOST:-127.0.0.1}"
    _SVC_PG_PORT="${_SVC_PG_PORT:-5432}"
    if [[ ! $_SVC_PG_PORT =~ ^[0-9]+$ ]]; then
        _svc_log "cannot parse a port out of DATABASE_URL (expected postgres://user[:password]@host:port/dbname)"
        return 1
    fi
}

# -------------------------------------------------------------------- Redis --

_svc_redis_dir() { printf '%s\n' "$_SVC_ROOT/.dev/redis"; }

# PING host port: redis-cli when present, else a raw PING over /dev/tcp.
_svc_redis_ping() {
    local host="$1" port="$2" reply
    if _svc_have redis-cli; then
        if [[ -n ${_SVC_REDIS_PASS:-} ]]; then
            reply="$(REDISCLI_AUTH="$_SVC_REDIS_PASS" _svc_timeout 5 redis-cli -h "$host" -p "$port" ping 2>/dev/null)" || return 1
        else
            reply="$(_svc_timeout 5 redis-cli -h "$host" -p "$port" ping 2>/dev/null)" || return 1
        fi
        [[ $reply == PONG* ]]
    else
        # shellcheck disable=SC2016  # expanded by the child bash
        _svc_timeout 5 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            if [[ -n $3 ]]; then printf "AUTH %s\r\n" "$3" >&3; fi
            printf "PING\r\n" >&3
            while IFS= read -r -t 3 line <&3; do
                case "$line" in
                    +PONG*) exit 0 ;;
                    -*) exit 1 ;;
                esac
            done
            exit 1' _ "$host" "$port" "${_SVC_REDIS_PASS:-}" 2>/dev/null
    fi
}

# Prints the pid of the private redis-server when it is running.
_svc_redis_private_pid() {
    local pidfile pid cmd
    pidfile="$(_svc_redis_dir)/redis.pid"
    [[ -r $pidfile ]] || return 1
    read -r pid <"$pidfile" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # make sure the pid was not recycled by some other program
    if [[ -r /proc/$pid/cmdline ]]; then
        cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
        [[ $cmd == *redis* ]] || return 1
    fi
    printf '%s\n' "$pid"
}

_svc_redis_start_private() {
    local host="$1" port="$2" dir pid
    dir="$(_svc_redis_dir)"
    if pid="$(_svc_redis_private_pid)"; then
        _svc_log "a private redis-server (pid $pid, $dir) is already running but not on port $port;"
        _svc_log "stop it first with: bash scripts/services.sh stop"
        return 1
    fi
    if ! mkdir -p "$dir"; then
        _svc_log "cannot create $dir"
        return 1
    fi
    rm -f "$dir/redis.pid"
    _svc_log "starting private redis-server on 127.0.0.1:$port (data in $dir)"
    if ! redis-server --daemonize yes --bind 127.0.0.1 --port "$port" \
        --dir "$dir" --appendonly yes --appendfsync everysec \
        --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" >&2; then
        _svc_log "redis-server failed to start; see $dir/redis.log"
        return 1
    fi
    if _svc_wait_for 10 _svc_redis_ping "$host" "$port"; then
        _svc_log "private redis at $host:$port answers"
        return 0
    fi
    _svc_log "private redis-server did not answer within 10 s; last lines of $dir/redis.log:"
    if [[ -r $dir/redis.log ]]; then
        tail -n 15 "$dir/redis.log" >&2
    fi
    return 1
}

_svc_ensure_redis() {
    local host port
    _svc_parse_redis_url "$REDIS_URL" || return 1
    host="$_SVC_REDIS_HOST"
    port="$_SVC_REDIS_PORT"

    # 1. something already answers
    if _svc_redis_ping "$host" "$port"; then
        if _svc_is_loopback "$host" && _svc_redis_private_pid >/dev/null; then
            _svc_log "redis at $host:$port answers (private one under .dev/redis), using it"
        else
            _svc_log "redis at $host:$port answers, using it"
        fi
        return 0
    fi

    if ! _svc_is_loopback "$host"; then
        _svc_log "redis at $host:$port does not answer PING, and $host is not a local address,"
        _svc_log "so no private redis can stand in for it; start that server or change REDIS_URL"
        return 1
    fi
    if _svc_tcp_open "$host" "$port"; then
        _svc_log "something listens on $host:$port but does not answer a redis PING (wrong password? not redis?);"
        _svc_log "free the port or point REDIS_URL elsewhere"
        return 1
    fi

    # 2. private redis-server from an existing binary
    if _svc_have redis-server; then
        _svc_redis_start_private "$host" "$port"
        return
    fi

    # 3. install it (root + apt-get), then as 2.
    if _svc_is_root && _svc_have apt-get; then
        _svc_log "redis does not answer at $host:$port and redis-server is not installed"
        _svc_apt_install redis-server redis-tools || return 1
        hash -r
        # the package may have started its own service on this port already
        if _svc_redis_ping "$host" "$port"; then
            _svc_log "redis at $host:$port answers (started by the redis-server package), using it"
            return 0
        fi
        if _svc_have redis-server; then
            _svc_redis_start_private "$host" "$port"
            return
        fi
        _svc_log "redis-server still not found after installing redis-server"
        return 1
    fi

    # 4. explain
    _svc_log "redis does not answer at $host:$port and there is no redis-server binary to start one."
    _svc_log "install it, e.g.:  sudo apt-get install redis-server redis-tools"
    _svc_log "(or point REDIS_URL at a running redis), then run this again"
    return 1
}

# --------------------------------------------------------------- PostgreSQL --

# psql client: PATH first, else next to the server binaries.
_svc_psql_bin() {
    local b
    if _svc_have psql; then
        command -v psql
        return 0
    fi
    for b in /usr/lib/postgresql/*/bin/psql; do
        if [[ -x $b ]]; then
            printf '%s\n' "$b"
        fi
    done | sort -V | tail -n 1 | grep .
}

# Directory holding initdb and pg_ctl: newest /usr/lib/postgresql/N/bin, else PATH.
# With a version argument, only that major version qualifies.
_svc_pg_bindir() {
    local want="${1:-}" d v best="" best_v=""
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] || continue
        v="${d#/usr/lib/postgresql/}"
        v="${v%/bin}"
        if [[ -n $want ]]; then
            [[ $v == "$want" ]] || continue
        elif [[ -n $best_v && $(printf '%s\n%s\n' "$best_v" "$v" | sort -V | tail -n 1) != "$v" ]]; then
            continue
        fi
        best="$d"
        best_v="$v"
    done
    if [[ -z $best ]] && _svc_have initdb && _svc_have pg_ctl; then
        d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
        if [[ -z $want ]]; then
            best="$d"
        elif v="$("$d/pg_ctl" --version 2>/dev/null)" && [[ $v =~ \ ([0-9]+)(\.|$) && ${BASH_REMATCH[1]} == "$want" ]]; then
            best="$d"
        fi
    fi
    [[ -n $best ]] || return 1
    printf '%s\n' "$best"
}

# Run a command as the OS user owning directory $1 (root only; otherwise as us).
_svc_run_as_owner() {
    local dir="$1" owner
    shift
    if _svc_is_root; then
        owner="$(stat -c %U "$dir" 2>/dev/null)" || owner=postgres
        if [[ $owner != root ]]; then
            (
                cd / || exit 1
                if _svc_have runuser; then
                    runuser -u "$owner" -- "$@"
                else
                    su -s /bin/bash "$owner" -c "$(printf '%q ' "$@")"
                fi
            )
            return
        fi
    fi
    "$@"
}

# Try a connection as the URL's user to the `postgres` maintenance database.
# Leaves the error text in _SVC_PG_ERR.
_svc_pg_ping() {
    local psql out
    _SVC_PG_ERR=""
    psql="$(_svc_psql_bin)" || {
        _SVC_PG_ERR="no psql client"
        return 1
    }
    if out="$(PGPASSWORD="${_SVC_PG_PASS:-}" PGCONNECT_TIMEOUT=5 "$psql" -X -w -q \
        -h "$_SVC_PG_HOST" -p "$_SVC_PG_PORT" -U "$_SVC_PG_USER" -d postgres \
        -tAc 'select 1' 2>&1)" && [[ $out == 1 ]]; then
        return 0
    fi
    _SVC_PG_ERR="$out"
    return 1
}

# Run SQL against the maintenance database; prints the result.
_svc_pg_sql() {
    local psql
    psql="$(_svc_psql_bin)" || return 1
    PGPASSWORD="${_SVC_PG_PASS:-}" PGCONNECT_TIMEOUT=5 "$psql" -X -w -q -v ON_ERROR_STOP=1 \
        -h "$_SVC_PG_HOST" -p "$_SVC_PG_PORT" -U "$_SVC_PG_USER" -d postgres -tAc "$1"
}

_svc_pg_create_db() {
    local db="$_SVC_PG_DB" lit ident found
    lit="${db//\'/\'\'}"
    ident="${db//\"/\"\"}"
    if ! found="$(_svc_pg_sql "select 1 from pg_database where datname = '$lit'")"; then
        _svc_log "could not query the database list at $_SVC_PG_HOST:$_SVC_PG_PORT"
        return 1
    fi
    if [[ $found == 1 ]]; then
        _svc_log "database '$db' exists"
        return 0
    fi
    _svc_log "creating database '$db'"
    if ! _svc_pg_sql "CREATE DATABASE \"$ident\"" >/dev/null; then
        _svc_log "could not create database '$db' (does user '$_SVC_PG_USER' have CREATEDB?)"
        return 1
    fi
}

_svc_pg_ensure_os_user() {
    if id -u postgres >/dev/null 2>&1; then
        return 0
    fi
    _svc_log "creating system user 'postgres' to own the private cluster"
    if ! useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
        --shell /bin/bash postgres; then
        _svc_log "useradd postgres failed"
        return 1
    fi
}

# Prints the data directory of the private cluster: an existing one if any,
# else a fresh empty directory that the cluster owner can write to.
_svc_pg_pick_datadir() {
    local primary="$_SVC_ROOT/.dev/pg" d
    for d in "$primary" "$_SVC_PG_FALLBACK_DIR"; do
        if [[ -f $d/PG_VERSION ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    done
    if ! _svc_is_root; then
        if ! mkdir -p "$primary"; then
            _svc_log "cannot create $primary"
            return 1
        fi
        chmod 700 "$primary"
        printf '%s\n' "$primary"
        return 0
    fi
    # root: initdb/postgres run as the postgres OS user, which must reach the dir
    if mkdir -p "$primary" && chown postgres: "$primary" && chmod 700 "$primary" &&
        _svc_run_as_owner "$primary" test -w "$primary" -a -x "$primary" 2>/dev/null; then
        printf '%s\n' "$primary"
        return 0
    fi
    rmdir "$primary" 2>/dev/null
    _svc_log "user 'postgres' cannot reach $_SVC_ROOT/.dev; using $_SVC_PG_FALLBACK_DIR instead"
    if mkdir -p "$_SVC_PG_FALLBACK_DIR" && chmod 755 "$(dirname "$_SVC_PG_FALLBACK_DIR")" &&
        chown postgres: "$_SVC_PG_FALLBACK_DIR" && chmod 700 "$_SVC_PG_FALLBACK_DIR"; then
        printf '%s\n' "$_SVC_PG_FALLBACK_DIR"
        return 0
    fi
    _svc_log "cannot prepare $_SVC_PG_FALLBACK_DIR"
    return 1
}

_svc_pg_start_private() {
    local port="$_SVC_PG_PORT" user="$_SVC_PG_USER" dir bindir ver running_port
    if _svc_is_root; then
        _svc_pg_ensure_os_user || return 1
        if ! _svc_have runuser && ! _svc_have su; then
            _svc_log "running as root but neither runuser nor su exists to run postgres as user 'postgres'"
            return 1
        fi
    fi
    dir="$(_svc_pg_pick_datadir)" || return 1

    if [[ -f $dir/PG_VERSION ]]; then
        read -r ver <"$dir/PG_VERSION" || ver=""
        if ! bindir="$(_svc_pg_bindir "$ver")"; then
            _svc_log "private cluster $dir was made by PostgreSQL $ver, whose server binaries are gone;"
            _svc_log "remove $dir (its data will be lost) or install postgresql-$ver"
            return 1
        fi
        if _svc_run_as_owner "$dir" "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
            running_port="$(sed -n 4p "$dir/postmaster.pid" 2>/dev/null)"
            _svc_log "private cluster $dir is running (port ${running_port:-?}) but does not accept"
            _svc_log "user '$user' on $_SVC_PG_HOST:$port; stop it with: bash scripts/services.sh stop"
            return 1
        fi
        _svc_log "starting existing private PostgreSQL cluster $dir on 127.0.0.1:$port"
    else
        bindir="$(_svc_pg_bindir)" || return 1
        _svc_log "creating private PostgreSQL cluster in $dir (initdb from $bindir, trust auth, user '$user')"
        if ! _svc_run_as_owner "$dir" "$bindir/initdb" -D "$dir" -A trust -U "$user" -E UTF8 \
            --locale=C >"$dir.initdb.log" 2>&1; then
            _svc_log "initdb failed:"
            tail -n 20 "$dir.initdb.log" >&2
            return 1
        fi
        rm -f "$dir.initdb.log"
        _svc_log "starting private PostgreSQL cluster on 127.0.0.1:$port"
    fi

    if ! _svc_run_as_owner "$dir" mkdir -p "$dir/socket"; then
        _svc_log "cannot create $dir/socket"
        return 1
    fi
    if ! _svc_run_as_owner "$dir" "$bindir/pg_ctl" -D "$dir" \
        -o "-p $port -k '$dir/socket' -c listen_addresses=127.0.0.1" \
        -l "$dir/log" -w -t 60 start >/dev/null 2>&1; then
        _svc_log "pg_ctl start failed; last lines of $dir/log:"
        tail -n 20 "$dir/log" >&2 2>/dev/null
        return 1
    fi
    if _svc_wait_for 10 _svc_pg_ping; then
        _svc_log "private PostgreSQL at $_SVC_PG_HOST:$port accepts user '$user'"
        return 0
    fi
    _svc_log "private PostgreSQL started but does not accept user '$user' at $_SVC_PG_HOST:$port: $_SVC_PG_ERR"
    return 1
}

# Install postgresql without letting Debian create and start its own "main"
# cluster (peer/scram auth, and it would take port 5432 from the private one).
_svc_pg_apt_install() {
    local conf=/etc/postgresql-common/createcluster.conf
    _svc_apt_install postgresql-common || return 1
    if [[ -f $conf ]]; then
        _svc_log "setting create_main_cluster = false in $conf (a private cluster is used instead)"
        if grep -Eq '^[#[:space:]]*create_main_cluster[[:space:]]*=' "$conf"; then
            sed -ri 's/^[#[:space:]]*(create_main_cluster)[[:space:]]*=.*/\1 = false/' "$conf"
        else
            printf 'create_main_cluster = false\n' >>"$conf"
        fi
    fi
    _svc_apt_install postgresql postgresql-client
    hash -r
}

_svc_ensure_postgres() {
    local host port user
    _svc_parse_pg_url "$DATABASE_URL" || return 1
    host="$_SVC_PG_HOST"
    port="$_SVC_PG_PORT"
    user="$_SVC_PG_USER"

    # 1. a server at host:port accepts the URL's user
    if _svc_psql_bin >/dev/null; then
        if _svc_pg_ping; then
            _svc_log "postgres at $host:$port accepts user '$user', using it"
            _svc_pg_create_db
            return
        fi
    elif _svc_tcp_open "$host" "$port"; then
        # a server may be there, but without psql it cannot be checked or used
        if _svc_is_root && _svc_have apt-get; then
            _svc_log "something listens on $host:$port but the psql client is missing"
            _svc_apt_install postgresql-client || return 1
            hash -r
            if _svc_pg_ping; then
                _svc_log "postgres at $host:$port accepts user '$user', using it"
                _svc_pg_create_db
                return
            fi
        else
            _svc_log "something listens on $host:$port but the psql client is missing;"
            _svc_log "install it, e.g.:  sudo apt-get install postgresql-client"
            return 1
        fi
    fi

    if _svc_tcp_open "$host" "$port"; then
        _svc_log "postgres at $host:$port does not accept user '$user':"
        [[ -n ${_SVC_PG_ERR:-} ]] && printf '%s\n' "$_SVC_PG_ERR" | sed 's/^/services:   /' >&2
        _svc_log "fix access for that user, or point DATABASE_URL at another port"
        return 1
    fi
    if ! _svc_is_loopback "$host"; then
        _svc_log "postgres at $host:$port does not answer, and $host is not a local address,"
        _svc_log "so no private cluster can stand in for it; start that server or change DATABASE_URL"
        return 1
    fi

    # 2. private cluster from existing server binaries
    if _svc_pg_bindir >/dev/null; then
        _svc_pg_start_private || return 1
        _svc_pg_create_db
        return
    fi

    # 3. install (root + apt-get), then as 2.
    if _svc_is_root && _svc_have apt-get; then
        _svc_log "postgres does not answer at $host:$port and no PostgreSQL server binaries (initdb, pg_ctl) exist"
        _svc_pg_apt_install || return 1
        if ! _svc_pg_bindir >/dev/null; then
            _svc_log "initdb/pg_ctl still not found after installing postgresql"
            return 1
        fi
        _svc_pg_start_private || return 1
        _svc_pg_create_db
        return
    fi

    # 4. explain
    _svc_log "postgres does not answer at $host:$port and no PostgreSQL server binaries"
    _svc_log "(initdb, pg_ctl in /usr/lib/postgresql/*/bin or PATH) exist to start a private one."
    _svc_log "install them, e.g.:  sudo apt-get install postgresql postgresql-client"
    _svc_log "(or point DATABASE_URL at a running server), then run this again"
    return 1
}

# ---------------------------------------------------------------- public API --

# Make Redis at $REDIS_URL and PostgreSQL at $DATABASE_URL answer, and make
# sure the URL's database exists. Exports both URLs.
ensure_services() {
    local - rc=0
    set +e +o pipefail
    export REDIS_URL="${REDIS_URL:-$_SVC_DEFAULT_REDIS_URL}"
    export DATABASE_URL="${DATABASE_URL:-$_SVC_DEFAULT_DATABASE_URL}"
    _svc_ensure_redis || rc=1
    _svc_ensure_postgres || rc=1
    if [[ $rc -ne 0 ]]; then
        _svc_log "some services are not available (see above)"
    fi
    return "$rc"
}

# Stop the private redis-server / PostgreSQL cluster started by ensure_services
# (under <project>/.dev and $_SVC_PG_FALLBACK_DIR). Leaves other servers alone.
stop_private_services() {
    local - pid i dir ver bindir cmd stopped=0 rc=0
    set +e +o pipefail
    if pid="$(_svc_redis_private_pid)"; then
        _svc_log "stopping private redis-server (pid $pid)"
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 80; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            _svc_log "private redis-server (pid $pid) did not stop"
            rc=1
        else
            stopped=1
        fi
    fi
    for dir in "$_SVC_ROOT/.dev/pg" "$_SVC_PG_FALLBACK_DIR"; do
        [[ -f $dir/postmaster.pid && -f $dir/PG_VERSION ]] || continue
        read -r ver <"$dir/PG_VERSION" || ver=""
        if bindir="$(_svc_pg_bindir "$ver")"; then
            if _svc_run_as_owner "$dir" "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
                _svc_log "stopping private PostgreSQL cluster $dir"
                if _svc_run_as_owner "$dir" "$bindir/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null 2>&1; then
                    stopped=1
                else
                    _svc_log "pg_ctl stop failed for $dir"
                    rc=1
                fi
            fi
        else
            # no pg_ctl for that version: signal the postmaster directly
            pid="$(sed -n 1p "$dir/postmaster.pid" 2>/dev/null)"
            cmd=""
            if [[ $pid =~ ^[0-9]+$ ]]; then
                cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
            fi
            if [[ -n $cmd && $cmd == *"$dir"* ]] && kill -0 "$pid" 2>/dev/null; then
                _svc_log "stopping private PostgreSQL cluster $dir (pid $pid)"
                kill -INT "$pid"
                stopped=1
            fi
        fi
    done
    if [[ $stopped -eq 0 && $rc -eq 0 ]]; then
        _svc_log "no private services running"
    fi
    return "$rc"
}

# Children (e.g. scripts spawned by scripts/run or scripts/test) can call these.
export _SVC_ROOT _SVC_PG_FALLBACK_DIR _SVC_DEFAULT_REDIS_URL _SVC_DEFAULT_DATABASE_URL
export -f ensure_services stop_private_services \
    _svc_log _svc_have _svc_is_root _svc_is_loopback _svc_urldecode _svc_timeout \
    _svc_tcp_open _svc_wait_for _svc_apt_install _svc_parse_redis_url _svc_parse_pg_url \
    _svc_redis_dir _svc_redis_ping _svc_redis_private_pid _svc_redis_start_private \
    _svc_ensure_redis _svc_psql_bin _svc_pg_bindir _svc_run_as_owner _svc_pg_ping \
    _svc_pg_sql _svc_pg_create_db _svc_pg_ensure_os_user _svc_pg_pick_datadir \
    _svc_pg_start_private _svc_pg_apt_install _svc_ensure_postgres

# Executed directly (not sourced).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    case "${1:-}" in
        "" | start | ensure) ensure_services ;;
        stop) stop_private_services ;;
        *)
            printf 'usage: %s [start|stop]\n' "$0" >&2
            exit 2
            ;;
    esac
    exit $?
fi
