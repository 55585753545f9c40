# shellcheck shell=bash
# Sourced by scripts/bootstrap: the `postgres` component. A PostgreSQL server (Debian's
# package) for the results history's tests and for trying `--mad-history` with a team's
# database: its own cluster, run by the postgres account (not root), on 127.0.0.1 only,
# with one login and database; the SQLAlchemy URL is written to a root-only file.

PG_DIR=/var/lib/pytest-madengine/postgres
PG_DATA=$PG_DIR/data
PG_SOCKETS=$PG_DIR/run
PG_URL_FILE=$PG_DIR/url
PG_PASSWORD_FILE=$PG_DIR/password
PG_ADDR=127.0.0.1
# Off 5432: Debian's own cluster (which the package may start) keeps its port.
PG_PORT=5439
PG_USER=mad
PG_DATABASE=mad_history

EXTRA_USAGE+="  postgres      PostgreSQL (Debian's package) on $PG_ADDR:$PG_PORT for the results
                history: a cluster of its own in $PG_DATA,
                run by the postgres account, with login $PG_USER and database
                $PG_DATABASE; the SQLAlchemy URL (with the password) is in
                $PG_URL_FILE (root only)
"

# The newest installed server's programs (initdb, pg_ctl are not on PATH).
postgres_bindir() {
  local dirs=(/usr/lib/postgresql/*/bin)
  [ ${#dirs[@]} -gt 0 ] || die "postgres: no server in /usr/lib/postgresql"
  printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1
}

postgres_password() {
  if [ ! -s "$PG_PASSWORD_FILE" ]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PG_PASSWORD_FILE")
  fi
  cat "$PG_PASSWORD_FILE"
}

postgres_answers() { pg_isready -q -h "$PG_ADDR" -p "$PG_PORT" -t 2; }

postgres_start() {
  local bindir=$1
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    rm -rf --one-file-system "$PG_DATA"
    install -d -o postgres -g postgres -m 700 "$PG_DATA"
    runuser -u postgres -- "$bindir/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
      --auth-local=peer --auth-host=scram-sha-256 >"$LOGDIR/postgres-initdb.log" 2>&1 ||
      die "postgres: initdb failed (log $LOGDIR/postgres-initdb.log)"
    say "postgres: cluster made in $PG_DATA"
  fi
  touch "$LOGDIR/postgres.log" && chown postgres: "$LOGDIR/postgres.log"
  # -w waits until it accepts connections; the server holds neither our lock nor pipes.
  runuser -u postgres -- "$bindir/pg_ctl" -D "$PG_DATA" -l "$LOGDIR/postgres.log" -w -t 60 \
    -o "-c listen_addresses=$PG_ADDR -p $PG_PORT -k $PG_SOCKETS" start >/dev/null 9>&- </dev/null ||
    die "postgres: did not start (log $LOGDIR/postgres.log)"
  say "postgres: started on $PG_ADDR:$PG_PORT (log $LOGDIR/postgres.log)"
}

# The login (its password set again: the file is the truth) and its database; the
# password goes through stdin, never a command line.
postgres_account() {
  local password=$1
  runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1 -h "$PG_SOCKETS" -p "$PG_PORT" \
    -d postgres >/dev/null <<SQL || die "postgres: could not make login $PG_USER and database $PG_DATABASE"
SELECT 'CREATE ROLE $PG_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER')\\gexec
ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE')\\gexec
SQL
}

component_postgres() {
  install_missing pg_isready=postgresql-client /usr/lib/postgresql=postgresql
  local bindir password
  bindir=$(postgres_bindir)
  id postgres >/dev/null 2>&1 || die "postgres: no postgres account (the package makes it)"
  mkdir -p "$PG_DIR" "$LOGDIR" && chmod 755 "$PG_DIR"
  install -d -o postgres -g postgres -m 755 "$PG_SOCKETS"
  password=$(postgres_password)
  if postgres_answers; then
    say "postgres: already answering on $PG_ADDR:$PG_PORT"
  else
    postgres_start "$bindir"
  fi
  postgres_account "$password"
  (umask 077 && echo "postgresql+psycopg://$PG_USER:$password@$PG_ADDR:$PG_PORT/$PG_DATABASE" \
    >"$PG_URL_FILE.new") && mv "$PG_URL_FILE.new" "$PG_URL_FILE"
  say "postgres: login $PG_USER, database $PG_DATABASE; the URL is in $PG_URL_FILE"
}
