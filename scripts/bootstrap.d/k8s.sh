# shellcheck shell=bash
# Sourced by scripts/bootstrap: a real single-node Kubernetes cluster (component k8s)
# and its teardown (component k8s-stop). Uses say, die, install_missing, new_scratch,
# debian_mirror, docker_answers, registry_status, LOGDIR and DOCKER_HOST from there.
#
# Kubernetes 1.20 is built from Debian bookworm's `kubernetes` source package (no server
# binary is packaged, and no image registry or Go module proxy is reachable), once: the
# binaries are kept under $K8S_DIR/bin/<source version>, the Go build cache under
# $K8S_DIR/go-cache. The daemons (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, a containerd of its own, kubelet) listen on 127.0.0.1 only.

EXTRA_USAGE+="  k8s           a single-node Kubernetes 1.20 cluster on 127.0.0.1:6443, built once
                from Debian's kubernetes source package (6-12 min, then cached in
                /var/lib/pytest-madengine/k8s/bin); etcd, its own containerd, pause
                image in the registry (needs: engine registry), node 'localhost' with
                4 fake amd.com/gpu and nvidia.com/gpu; admin kubeconfig (root only) in
                /var/lib/pytest-madengine/k8s/kubeconfig
  k8s-stop      stops that cluster: its pods, containerd, kubelet and control plane,
                mounts and cgroups; the next \`k8s\` starts a fresh (empty) cluster
"

K8S_DIR=/var/lib/pytest-madengine/k8s
K8S_BIN_ROOT=$K8S_DIR/bin
K8S_PKI=$K8S_DIR/pki
K8S_KUBECONFIG=$K8S_DIR/kubeconfig
K8S_RUN=/run/pytest-madengine/k8s
K8S_LOGDIR=$LOGDIR/k8s
K8S_CONTAINERD_SOCK=$K8S_RUN/containerd/containerd.sock
K8S_API=https://127.0.0.1:6443
K8S_NODE=localhost
K8S_BRIDGE=madk8s0
K8S_POD_SUBNET=10.244.0.0/24
K8S_SERVICE_RANGE=10.96.0.0/16
K8S_GPUS=4
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
K8S_GO=/usr/lib/go-1.19/bin/go
K8S_DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Debian registry's login (scripts/bootstrap registry): "address": {username, password}.
K8S_REGISTRY_CREDENTIAL=/var/lib/pytest-madengine/registry/credential.json
K8S_REGISTRY=127.0.0.1:5000
# Daemons in start order; k8s-stop stops them in reverse.
K8S_DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet)

# ---- binaries: built once from the source package, cached by its version ----

# The binaries of one source version are complete once its directory holds this file.
K8S_BIN_STAMP=.complete

k8s_bin() { echo "$K8S_BIN_ROOT/current/$1"; }

k8s_binaries_cached() { [ -e "$K8S_BIN_ROOT/current/$K8S_BIN_STAMP" ]; }

# apt options that make apt-get see only our deb-src entry (the system's sources stay as
# they are; the other package lists are kept).
k8s_apt_opts() {
  echo "-o Dir::Etc::SourceList=$K8S_DIR/apt/deb-src.sources -o Dir::Etc::SourceParts=- -o APT::Get::List-Cleanup=0"
}

# Downloads and unpacks the kubernetes source package into $1; prints its version.
k8s_fetch_source() {
  local dest=$1 mirror dsc
  mirror=$(debian_mirror) || die "k8s: no bookworm mirror found in apt's sources (/etc/apt/sources.list*)"
  mkdir -p "$K8S_DIR/apt"
  # A deb-src entry for the mirror apt already uses for bookworm, checked with Debian's
  # archive keyring where there is one (else with apt's trusted.gpg.d).
  {
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\n' "$mirror"
    [ ! -f "$K8S_DEBIAN_KEYRING" ] || printf 'Signed-By: %s\n' "$K8S_DEBIAN_KEYRING"
  } >"$K8S_DIR/apt/deb-src.sources"
  # shellcheck disable=SC2046
  apt-get update -qq $(k8s_apt_opts) >>"$K8S_LOGDIR/build.log" 2>&1 ||
    die "k8s: apt-get update of the deb-src index failed (log $K8S_LOGDIR/build.log)"
  mkdir -p "$WORK/apt-source"
  chown _apt "$WORK/apt-source" 2>/dev/null || true
  # shellcheck disable=SC2046
  (cd "$WORK/apt-source" && apt-get source -qq --download-only $(k8s_apt_opts) kubernetes) \
    >>"$K8S_LOGDIR/build.log" 2>&1 || die "k8s: apt-get source kubernetes failed (log $K8S_LOGDIR/build.log)"
  dsc=$(echo "$WORK"/apt-source/kubernetes_*.dsc)
  [ -f "$dsc" ] || die "k8s: apt-get source left no kubernetes .dsc in $WORK/apt-source"
  # dpkg-source applies Debian's patches; it only warns when it cannot check the signature.
  dpkg-source -x "$dsc" "$dest" >>"$K8S_LOGDIR/build.log" 2>&1 ||
    die "k8s: dpkg-source -x $dsc failed (log $K8S_LOGDIR/build.log)"
  awk '$1 == "Version:" { print $2; exit }' "$dsc"
}

# The upstream version in a Debian version: 1.20.5+really1.20.2-1.1+deb12u1 -> 1.20.2.
k8s_upstream_version() {
  local v=${1#*:}
  v=${v%-*}
  echo "${v##*really}"
}

k8s_build() {  # source tree, output directory, upstream version
  local tree=$1 out=$2 version=$3 major minor ldflags pkg vendor=k8s.io/kubernetes/vendor/k8s.io bin start
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in $vendor/component-base/version $vendor/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=v$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  # GOPATH mode: the tree is $GOPATH/src/k8s.io/kubernetes. The build cache is kept and
  # -trimpath keeps its keys free of the (scratch) path, so a rebuild takes seconds.
  export GOPATH=$WORK/gopath GO111MODULE=off GOCACHE=$K8S_DIR/go-cache GOFLAGS='' \
    PATH=${K8S_GO%/go}:$PATH
  mkdir -p "$GOCACHE" "$out"
  start=$SECONDS
  # The 1.0.1 copy of reflect2 in vendor/ reads Go runtime internals that changed in Go
  # 1.18; Debian's 1.0.2 is a drop-in replacement.
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/*.go "$tree"/vendor/github.com/modern-go/reflect2/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
    "$tree/vendor/github.com/modern-go/reflect2/"
  say "k8s: make generated_files (log $K8S_LOGDIR/build.log)"
  if ! (cd "$tree" && nice -n 10 make generated_files) >>"$K8S_LOGDIR/build.log" 2>&1; then
    tail -n 20 "$K8S_LOGDIR/build.log" >&2
    die "k8s: make generated_files failed (log $K8S_LOGDIR/build.log)"
  fi
  for bin in "${K8S_BINARIES[@]}"; do
    say "k8s: go build ./cmd/$bin ($((SECONDS - start)) s so far)"
    local cgo=0
    [ "$bin" = kubelet ] && cgo=1
    if ! (cd "$tree" && CGO_ENABLED=$cgo nice -n 10 go build -trimpath -ldflags "$ldflags" \
      -o "$out/$bin" "./cmd/$bin") >>"$K8S_LOGDIR/build.log" 2>&1; then
      tail -n 20 "$K8S_LOGDIR/build.log" >&2
      die "k8s: go build ./cmd/$bin failed (log $K8S_LOGDIR/build.log)"
    fi
  done
  # The pod sandbox ("pause") binary, from the same tree: static, for a FROM scratch image.
  gcc -Os -Wall -Werror -static -DVERSION="v$(k8s_pause_tag "$tree")-debian" \
    -o "$out/pause" "$tree/build/pause/linux/pause.c" >>"$K8S_LOGDIR/build.log" 2>&1 ||
    die "k8s: gcc build/pause/linux/pause.c failed (log $K8S_LOGDIR/build.log)"
  k8s_pause_tag "$tree" >"$out/pause.tag"
  "$out/kubectl" version --client --short >>"$K8S_LOGDIR/build.log" 2>&1 ||
    die "k8s: the new kubectl does not run (log $K8S_LOGDIR/build.log)"
  say "k8s: built ${K8S_BINARIES[*]} pause in $((SECONDS - start)) s"
}

k8s_pause_tag() { awk '$1 == "TAG" && $2 == "=" { print $3; exit }' "$1/build/pause/Makefile"; }

# Makes $K8S_BIN_ROOT/current point at complete binaries: the cached ones, or new ones.
k8s_binaries() {
  if k8s_binaries_cached; then
    say "k8s: binaries cached ($(readlink "$K8S_BIN_ROOT/current"))"
    return 0
  fi
  local start=$SECONDS version tree
  install_missing "$K8S_GO=golang-1.19-go" rsync=rsync gcc=gcc make=make \
    /usr/include/stdio.h=libc6-dev dpkg-source=dpkg-dev \
    /usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go=golang-github-modern-go-reflect2-dev
  new_scratch k8s-build
  tree=$WORK/gopath/src/k8s.io/kubernetes
  mkdir -p "${tree%/*}"
  say "k8s: fetching Debian's kubernetes source package (log $K8S_LOGDIR/build.log)"
  version=$(k8s_fetch_source "$tree")
  if [ -e "$K8S_BIN_ROOT/$version/$K8S_BIN_STAMP" ]; then
    say "k8s: binaries of $version cached"
  else
    say "k8s: building Kubernetes $(k8s_upstream_version "$version") from source $version (about 6 min cold)"
    rm -rf "${K8S_BIN_ROOT:?}/$version"
    k8s_build "$tree" "$K8S_BIN_ROOT/$version.partial" "$(k8s_upstream_version "$version")"
    mv "$K8S_BIN_ROOT/$version.partial" "$K8S_BIN_ROOT/$version"
    touch "$K8S_BIN_ROOT/$version/$K8S_BIN_STAMP"
  fi
  ln -sfn "$version" "$K8S_BIN_ROOT/current"
  # The source tree (about 1 GB with generated files) goes with the scratch directory.
  rm -rf --one-file-system "$WORK"
  say "k8s: binaries ready in $((SECONDS - start)) s ($K8S_BIN_ROOT/$version)"
}

# ---- certificates and kubeconfigs, made once ----

k8s_cert() {  # name subject extensions: an EC key and a certificate signed by our CA
  local name=$1 subject=$2 extensions=$3
  [ -s "$K8S_PKI/$name.pem" ] && return 0
  (
    cd "$K8S_PKI"
    umask 077
    openssl ecparam -genkey -name prime256v1 -noout -out "$name-key.pem"
    openssl req -new -key "$name-key.pem" -subj "$subject" -out "$name.csr"
    printf '%b\n' "$extensions" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -set_serial "0x$(openssl rand -hex 16)" \
      -days 3650 -extfile "$name.ext" -out "$name.pem.new"
    rm -f "$name.csr" "$name.ext"
    mv "$name.pem.new" "$name.pem"
  ) >/dev/null 2>&1 || die "k8s: openssl could not make the certificate $name"
}

k8s_kubeconfig() {  # file, user, client cert name; data embedded, so the file stands alone
  local file=$1 user=$2 cert=$3
  (
    umask 077
    cat >"$file.new" <<EOF
# written by pytest-madengine scripts/bootstrap k8s
apiVersion: v1
kind: Config
clusters:
- name: pytest-madengine
  cluster:
    server: $K8S_API
    certificate-authority-data: $(base64 -w0 "$K8S_PKI/ca.pem")
users:
- name: "$user"
  user:
    client-certificate-data: $(base64 -w0 "$K8S_PKI/$cert.pem")
    client-key-data: $(base64 -w0 "$K8S_PKI/$cert-key.pem")
contexts:
- name: pytest-madengine
  context: {cluster: pytest-madengine, user: "$user", namespace: default}
current-context: pytest-madengine
EOF
  )
  if cmp -s "$file.new" "$file"; then rm -f "$file.new"; else mv "$file.new" "$file"; fi
}

k8s_pki() {
  mkdir -p "$K8S_PKI" && chmod 700 "$K8S_DIR" "$K8S_PKI"
  if [ ! -s "$K8S_PKI/ca.pem" ]; then
    # A new CA: whatever it signed before is worthless now.
    rm -f "$K8S_PKI"/*.pem
    (
      cd "$K8S_PKI"
      umask 077
      openssl ecparam -genkey -name prime256v1 -noout -out ca-key.pem
      openssl req -x509 -new -key ca-key.pem -subj /CN=pytest-madengine-k8s-ca -days 3650 -out ca.pem.new
      mv ca.pem.new ca.pem
    ) >/dev/null 2>&1 || die "k8s: openssl could not make the CA"
  fi
  local server="extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
  local client="extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
  local svc_ip=${K8S_SERVICE_RANGE%.*/*}.1
  k8s_cert apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$svc_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n$server"
  k8s_cert kubelet-serving "/CN=$K8S_NODE" "subjectAltName=IP:127.0.0.1,DNS:localhost\n$server"
  k8s_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  k8s_cert admin "/O=system:masters/CN=pytest-madengine-admin" "$client"
  k8s_cert controller-manager /CN=system:kube-controller-manager "$client"
  k8s_cert scheduler /CN=system:kube-scheduler "$client"
  k8s_cert kubelet "/O=system:nodes/CN=system:node:$K8S_NODE" "$client"
  if [ ! -s "$K8S_PKI/sa.pub" ]; then
    (
      cd "$K8S_PKI"
      umask 077
      openssl genrsa -out sa-key.pem 2048
      openssl rsa -in sa-key.pem -pubout -out sa.pub.new
      mv sa.pub.new sa.pub
    ) >/dev/null 2>&1 || die "k8s: openssl could not make the service-account key pair"
  fi
  k8s_kubeconfig "$K8S_KUBECONFIG" admin admin
  k8s_kubeconfig "$K8S_PKI/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  k8s_kubeconfig "$K8S_PKI/scheduler.kubeconfig" system:kube-scheduler scheduler
  k8s_kubeconfig "$K8S_PKI/kubelet.kubeconfig" "system:node:$K8S_NODE" kubelet
}

# ---- the API, as admin ----

k8s_curl() {  # curl arguments...: a request to the API server as admin
  curl -sS --max-time 10 --cacert "$K8S_PKI/ca.pem" --cert "$K8S_PKI/admin.pem" \
    --key "$K8S_PKI/admin-key.pem" "$@"
}

k8s_api_ready() { [ "$(k8s_curl "$K8S_API/readyz" 2>/dev/null)" = ok ]; }

# Prints "<Ready status> <amd.com/gpu capacity> <nvidia.com/gpu capacity>" of our node.
k8s_node_state() {
  k8s_curl "$K8S_API/api/v1/nodes/$K8S_NODE" 2>/dev/null | python3 -c '
import json, sys
try:
    node = json.load(sys.stdin)
except ValueError:
    node = {}
if node.get("kind") != "Node":  # no answer, or a Status saying why not
    print("absent - -"); sys.exit()
status = node.get("status", {})
ready = [c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"] or ["unknown"]
have = status.get("allocatable", {})
print(ready[0], have.get("amd.com/gpu", "-"), have.get("nvidia.com/gpu", "-"))'
}

# Fake GPUs: extended resources in the node's status, as a device plugin would add them.
k8s_advertise_gpus() {
  local patch="" resource
  for resource in amd.com~1gpu nvidia.com~1gpu; do
    patch+="{\"op\": \"add\", \"path\": \"/status/capacity/$resource\", \"value\": \"$K8S_GPUS\"},"
    patch+="{\"op\": \"add\", \"path\": \"/status/allocatable/$resource\", \"value\": \"$K8S_GPUS\"},"
  done
  k8s_curl -f -o /dev/null -X PATCH -H 'Content-Type: application/json-patch+json' \
    --data "[${patch%,}]" "$K8S_API/api/v1/nodes/$K8S_NODE/status" ||
    die "k8s: could not patch the GPUs into node $K8S_NODE's status"
}

# ---- daemons ----

# The pid of the daemon NAME if it runs (its pid file names a live process of its binary).
k8s_pid() {
  local pid exe
  pid=$(cat "$K8S_RUN/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && exe=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n 1) || return 1
  [ "$exe" = "$(cat "$K8S_RUN/$1.exe" 2>/dev/null)" ] && echo "$pid"
}

k8s_spawn() {  # name binary args...: a daemon that outlives this script
  local name=$1
  shift
  mkdir -p "$K8S_RUN" "$K8S_LOGDIR"
  echo "--- $(date -u +%FT%TZ) bootstrap k8s starts $name" >>"$K8S_LOGDIR/$name.log"
  echo "$1" >"$K8S_RUN/$name.exe"
  setsid "$@" >>"$K8S_LOGDIR/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$K8S_RUN/$name.pid"
}

k8s_wait() {  # name seconds what command...: until the command succeeds
  local name=$1 limit=$2 what=$3 deadline=$((SECONDS + $2)) pid
  shift 3
  pid=$(cat "$K8S_RUN/$name.pid" 2>/dev/null) || pid=""
  until "$@"; do
    # By pid alone, not k8s_pid's binary check: a daemon spawned a moment ago may not
    # have exec'd its binary yet (it is still setsid), and it is ours either way.
    if [ -z "$pid" ] || ! k8s_alive "$pid"; then
      echo "--- tail of $K8S_LOGDIR/$name.log:" >&2
      tail -n 25 "$K8S_LOGDIR/$name.log" >&2 2>/dev/null || true
      die "k8s: $name exited before $what (log $K8S_LOGDIR/$name.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "--- tail of $K8S_LOGDIR/$name.log:" >&2
      tail -n 25 "$K8S_LOGDIR/$name.log" >&2 2>/dev/null || true
      die "k8s: no $what after $limit s (log $K8S_LOGDIR/$name.log)"
    fi
    sleep 0.3
  done
}

k8s_etcd_healthy() { curl -sf --max-time 3 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; }

k8s_start_etcd() {
  mkdir -p "$K8S_DIR/etcd" && chmod 700 "$K8S_DIR/etcd"
  k8s_spawn etcd "$(command -v etcd)" --name pytest-madengine --data-dir "$K8S_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster pytest-madengine=http://127.0.0.1:2380 \
    --quota-backend-bytes $((512 * 1024 * 1024)) --snapshot-count 10000
  k8s_wait etcd 30 "healthy etcd on 127.0.0.1:2379" k8s_etcd_healthy
}

k8s_start_apiserver() {
  local pki=$K8S_PKI
  k8s_spawn kube-apiserver "$(k8s_bin kube-apiserver)" \
    --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address=127.0.0.1 \
    --tls-cert-file="$pki/apiserver.pem" --tls-private-key-file="$pki/apiserver-key.pem" \
    --client-ca-file="$pki/ca.pem" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa-key.pem" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$K8S_SERVICE_RANGE" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --anonymous-auth=false --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.pem" \
    --kubelet-client-key="$pki/apiserver-kubelet-client-key.pem" \
    --kubelet-certificate-authority="$pki/ca.pem" \
    --kubelet-preferred-address-types=Hostname \
    --profiling=false --event-ttl=30m
  k8s_wait kube-apiserver 60 "ready API server on $K8S_API" k8s_api_ready
}

# No --authentication-kubeconfig for these two: it makes them look every 10 s for a
# front-proxy CA that this API server does not have, and log each miss. Their own HTTPS
# endpoints (healthz, metrics) then answer nobody but are not needed.
k8s_start_controller_manager() {
  local kc=$K8S_PKI/controller-manager.kubeconfig
  k8s_spawn kube-controller-manager "$(k8s_bin kube-controller-manager)" \
    --kubeconfig="$kc" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false \
    --service-account-private-key-file="$K8S_PKI/sa-key.pem" --root-ca-file="$K8S_PKI/ca.pem" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$K8S_PKI/ca.pem" --cluster-signing-key-file="$K8S_PKI/ca-key.pem" \
    --profiling=false
}

k8s_start_scheduler() {
  local kc=$K8S_PKI/scheduler.kubeconfig
  k8s_spawn kube-scheduler "$(k8s_bin kube-scheduler)" \
    --kubeconfig="$kc" \
    --bind-address=127.0.0.1 --port=0 --leader-elect=false --profiling=false
}

k8s_pause_image() { echo "$K8S_REGISTRY/pytest-madengine/pause:$(cat "$K8S_BIN_ROOT/current/pause.tag")"; }

# Registry requests with the login read from its file (never on a command line).
k8s_registry_has() {  # repository tag
  python3 - "$K8S_REGISTRY_CREDENTIAL" "$K8S_REGISTRY" "$1" "$2" <<'PY'
import base64, json, sys, urllib.error, urllib.request
path, registry, repository, tag = sys.argv[1:]
login = json.load(open(path))[registry]
token = base64.b64encode(f"{login['username']}:{login['password']}".encode()).decode()
request = urllib.request.Request(
    f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
    headers={"Authorization": f"Basic {token}",
             "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
try:
    urllib.request.urlopen(request, timeout=5)
except (urllib.error.URLError, OSError):
    sys.exit(1)
PY
}

k8s_registry_field() {  # username | password
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][sys.argv[3]])' \
    "$K8S_REGISTRY_CREDENTIAL" "$K8S_REGISTRY" "$1"
}

# The pod sandbox image, from the pause binary built with the others, in our registry.
k8s_push_pause() {
  local image repository tag
  image=$(k8s_pause_image)
  repository=${image#*/}
  tag=${repository##*:}
  repository=${repository%:*}
  if k8s_registry_has "$repository" "$tag"; then
    say "k8s: $image in the registry"
    return 0
  fi
  new_scratch k8s-pause
  cp "$K8S_BIN_ROOT/current/pause" "$WORK/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$WORK/Dockerfile"
  docker build -q -t "$image" "$WORK" >>"$K8S_LOGDIR/pause.log" 2>&1 ||
    die "k8s: docker build of $image failed (log $K8S_LOGDIR/pause.log)"
  # A login of our own, not root's ~/.docker: it goes with the scratch directory.
  mkdir -p "$WORK/docker-config"
  k8s_registry_field password | DOCKER_CONFIG=$WORK/docker-config docker login \
    --username "$(k8s_registry_field username)" --password-stdin "$K8S_REGISTRY" >>"$K8S_LOGDIR/pause.log" 2>&1 ||
    die "k8s: docker login $K8S_REGISTRY failed (log $K8S_LOGDIR/pause.log)"
  DOCKER_CONFIG=$WORK/docker-config docker push "$image" >>"$K8S_LOGDIR/pause.log" 2>&1 ||
    die "k8s: docker push $image failed (log $K8S_LOGDIR/pause.log)"
  rm -rf "$WORK"
  say "k8s: built $image from build/pause/linux/pause.c and pushed it"
}

k8s_toml_string() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

k8s_write_containerd_config() {
  local user password
  user=$(k8s_toml_string "$(k8s_registry_field username)")
  password=$(k8s_toml_string "$(k8s_registry_field password)")
  mkdir -p "$K8S_DIR/containerd" "$K8S_DIR/cni" && chmod 700 "$K8S_DIR/containerd"
  cat >"$K8S_DIR/cni/10-pytest-madengine.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "pytest-madengine-k8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$K8S_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$K8S_RUN/cni-ipam",
        "ranges": [[{"subnet": "$K8S_POD_SUBNET"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
  (
    umask 077
    cat >"$K8S_DIR/containerd/config.toml" <<EOF
# written by pytest-madengine scripts/bootstrap k8s: a containerd for kubelet alone
version = 2
root = "$K8S_DIR/containerd/root"
state = "$K8S_RUN/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$K8S_CONTAINERD_SOCK"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$(k8s_pause_image)"
  # This machine withholds CAP_SYS_RESOURCE: without it every sandbox fails to start.
  restrict_oom_score_adj = true
  # Network namespaces of pods under our state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$K8S_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$K8S_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$K8S_REGISTRY"]
    endpoint = ["http://$K8S_REGISTRY"]
  [plugins."io.containerd.grpc.v1.cri".registry.configs."$K8S_REGISTRY".auth]
    username = $user
    password = $password
EOF
  )
}

k8s_containerd_answers() {
  [ -S "$K8S_CONTAINERD_SOCK" ] &&
    ctr --address "$K8S_CONTAINERD_SOCK" --connect-timeout 2s version >/dev/null 2>&1
}

# containerd answers before its CRI plugin has recovered its state (seconds, with the
# pods of an earlier run), and a kubelet that asks then gives up: "server is not
# initialized yet". The CRI is ready once it logs that it serves streams, after this start.
k8s_cri_ready() {
  awk '/^--- .* bootstrap k8s starts containerd$/ { ready = 0 }
       /Start streaming server/ { ready = 1 }
       END { exit !ready }' "$K8S_LOGDIR/containerd.log"
}

k8s_start_containerd() {
  k8s_write_containerd_config
  mkdir -p "$K8S_RUN"
  k8s_spawn containerd "$(command -v containerd)" --config "$K8S_DIR/containerd/config.toml"
  k8s_wait containerd 30 "containerd on $K8S_CONTAINERD_SOCK" k8s_containerd_answers
  # Best effort: a containerd that words it differently is waited for 30 s, then trusted.
  local deadline=$((SECONDS + 30))
  until k8s_cri_ready || [ $SECONDS -ge $deadline ]; do sleep 0.3; done
}

# kubelet sets these kernel tunables on start (to 1, 0, 10, 1 and two key quotas); the
# alternative, protectKernelDefaults, refuses to start on a machine that differs. So the
# machine's own values are kept here before the first kubelet starts, and k8s-stop puts
# them back.
K8S_KERNEL_TUNABLES=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
K8S_SAVED_TUNABLES=$K8S_RUN/kernel-tunables

k8s_save_tunables() {
  local tunable
  [ -e "$K8S_SAVED_TUNABLES" ] && return 0
  for tunable in "${K8S_KERNEL_TUNABLES[@]}"; do
    echo "$tunable $(cat "/proc/sys/$tunable")"
  done >"$K8S_SAVED_TUNABLES.new"
  mv "$K8S_SAVED_TUNABLES.new" "$K8S_SAVED_TUNABLES"
}

k8s_restore_tunables() {
  local tunable value
  [ -f "$K8S_SAVED_TUNABLES" ] || return 0
  while read -r tunable value; do
    [ "$(cat "/proc/sys/$tunable")" = "$value" ] || echo "$value" >"/proc/sys/$tunable" ||
      say "k8s-stop: could not set $tunable back to $value"
  done <"$K8S_SAVED_TUNABLES"
  rm -f "$K8S_SAVED_TUNABLES"
}

k8s_start_kubelet() {
  local root=$K8S_DIR/kubelet
  k8s_save_tunables
  mkdir -p "$root"
  cat >"$K8S_DIR/kubelet-config.yaml" <<EOF
# written by pytest-madengine scripts/bootstrap k8s
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $K8S_PKI/ca.pem}
authorization: {mode: Webhook}
tlsCertFile: $K8S_PKI/kubelet-serving.pem
tlsPrivateKeyFile: $K8S_PKI/kubelet-serving-key.pem
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
maxPods: 50
# No iptables chains of kubelet's in the host's firewall (there is no kube-proxy to use them).
makeIPTablesUtilChains: false
# A new node turns Ready at its first status update after registering: 2 s, not 10 s.
# Updates only reach the API when the status changed (or every 5 min).
nodeStatusUpdateFrequency: 2s
EOF
  k8s_spawn kubelet "$(k8s_bin kubelet)" \
    --config="$K8S_DIR/kubelet-config.yaml" --kubeconfig="$K8S_PKI/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$K8S_CONTAINERD_SOCK" \
    --pod-infra-container-image="$(k8s_pause_image)" \
    --hostname-override="$K8S_NODE" --root-dir="$root" --cert-dir="$root/pki"
}

# Ready in the API, and kubelet answers itself (the API may still show a stale Ready).
k8s_node_ready() {
  [ "$(curl -s --max-time 3 http://127.0.0.1:10248/healthz 2>/dev/null)" = ok ] &&
    [ "$(k8s_node_state | cut -d' ' -f1)" = True ]
}

k8s_gpus_advertised() { [ "$(k8s_node_state | cut -d' ' -f2-)" = "$K8S_GPUS $K8S_GPUS" ]; }

k8s_gpus_or_patch() { k8s_gpus_advertised || { k8s_advertise_gpus; false; }; }

k8s_all_running() {
  local name
  for name in "${K8S_DAEMONS[@]}"; do k8s_pid "$name" >/dev/null || return 1; done
}

component_k8s() {
  docker_answers || die "no Docker Engine answers on ${DOCKER_HOST#unix://}; run: $0 engine"
  [ "$(registry_status)" = 401 ] || die "k8s: no registry answers on $K8S_REGISTRY; run: $0 registry"
  mkdir -p "$K8S_DIR" "$K8S_LOGDIR" "$K8S_RUN" && chmod 700 "$K8S_DIR"
  install_missing etcd=etcd-server containerd=containerd runc=runc ctr=containerd \
    /usr/lib/cni/bridge=containernetworking-plugins openssl=openssl curl=curl
  if k8s_all_running && k8s_api_ready && k8s_node_ready && k8s_gpus_advertised; then
    say "k8s: cluster already up on $K8S_API, node $K8S_NODE Ready (kubeconfig $K8S_KUBECONFIG)"
    return 0
  fi
  local start=$SECONDS
  k8s_binaries
  k8s_pki
  k8s_push_pause
  if k8s_pid etcd >/dev/null; then say "k8s: etcd running"; else k8s_start_etcd; fi
  if k8s_pid kube-apiserver >/dev/null; then
    k8s_wait kube-apiserver 60 "ready API server on $K8S_API" k8s_api_ready
  else
    k8s_start_apiserver
  fi
  say "k8s: API server ready on $K8S_API ($((SECONDS - start)) s)"
  k8s_pid kube-controller-manager >/dev/null || k8s_start_controller_manager
  k8s_pid kube-scheduler >/dev/null || k8s_start_scheduler
  k8s_pid containerd >/dev/null || k8s_start_containerd
  k8s_pid kubelet >/dev/null || k8s_start_kubelet
  k8s_wait kubelet 120 "Ready node $K8S_NODE" k8s_node_ready
  say "k8s: node $K8S_NODE Ready ($((SECONDS - start)) s)"
  # A kubelet that registers again sets extended resources to 0: patch until they stay.
  k8s_wait kubelet 30 "GPUs in node $K8S_NODE's status" k8s_gpus_or_patch
  local name
  for name in kube-controller-manager kube-scheduler; do
    k8s_pid "$name" >/dev/null || { tail -n 20 "$K8S_LOGDIR/$name.log" >&2; die "k8s: $name exited (log $K8S_LOGDIR/$name.log)"; }
  done
  say "k8s: cluster up in $((SECONDS - start)) s: $K8S_API, node $K8S_NODE with $K8S_GPUS amd.com/gpu and nvidia.com/gpu; kubeconfig $K8S_KUBECONFIG, kubectl $(k8s_bin kubectl), logs $K8S_LOGDIR"
}

# ---- k8s-stop ----

# Whether a process runs: our daemons' parent is init, which may take seconds to reap them.
k8s_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

k8s_stop_daemon() {  # name
  local pid waited=0
  pid=$(k8s_pid "$1") || { rm -f "$K8S_RUN/$1.pid" "$K8S_RUN/$1.exe"; return 0; }
  kill "$pid" 2>/dev/null || true
  while k8s_alive "$pid" && [ $waited -lt 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if k8s_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    say "k8s-stop: $1 (pid $pid) ignored SIGTERM for 10 s; killed"
  fi
  rm -f "$K8S_RUN/$1.pid" "$K8S_RUN/$1.exe"
  say "k8s-stop: stopped $1"
}

k8s_ctr() { ctr --address "$K8S_CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# Stops every pod container of our containerd and forgets them.
k8s_kill_pods() {
  local task count=0
  for task in $(k8s_ctr tasks ls -q 2>/dev/null); do
    k8s_ctr tasks kill --all --signal SIGKILL "$task" >/dev/null 2>&1 || true
    count=$((count + 1))
  done
  for task in $(k8s_ctr tasks ls -q 2>/dev/null); do
    k8s_ctr tasks delete --force "$task" >/dev/null 2>&1 || true
  done
  for task in $(k8s_ctr containers ls -q 2>/dev/null); do
    k8s_ctr containers delete "$task" >/dev/null 2>&1 || true
  done
  [ $count -eq 0 ] || say "k8s-stop: killed $count pod containers"
}

# Shims our containerd started outlive it; they name its socket in their arguments.
k8s_kill_shims() {
  local pid
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $K8S_CONTAINERD_SOCK" || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

k8s_unmount_under() {  # directories...
  local dir
  for dir in "$@"; do
    # kubelet bind-mounts its root directory onto itself: that one goes too (last).
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
      while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true; done
  done
}

k8s_remove_cgroups() {
  local top
  for top in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    if [ -d "$top" ]; then find "$top" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

# containerd's CNI library caches each pod's network results in the fixed
# /var/lib/cni/results; a pod killed beneath kubelet leaves its files there: ours are
# named after our network, with a loopback file of the same sandbox id beside them.
k8s_remove_cni_cache() {
  local file id
  for file in /var/lib/cni/results/pytest-madengine-k8s-*-eth0; do
    id=${file#/var/lib/cni/results/pytest-madengine-k8s-}
    id=${id%-eth0}
    rm -f "$file" "/var/lib/cni/results/cni-loopback-$id-lo"
  done
  rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
}

component_k8s_stop() {
  local i
  k8s_stop_daemon kubelet
  if k8s_containerd_answers; then k8s_kill_pods; fi
  for ((i = ${#K8S_DAEMONS[@]} - 1; i >= 0; i--)); do
    [ "${K8S_DAEMONS[i]}" = kubelet ] || k8s_stop_daemon "${K8S_DAEMONS[i]}"
  done
  k8s_kill_shims
  k8s_restore_tunables
  k8s_unmount_under "$K8S_RUN" "$K8S_DIR/kubelet" "$K8S_DIR/containerd"
  k8s_remove_cgroups
  ip link show "$K8S_BRIDGE" >/dev/null 2>&1 && ip link delete "$K8S_BRIDGE"
  # Pod logs are in kubelet's fixed /var/log/pods (links in /var/log/containers). Our
  # kubelet's garbage collector claims all of it (it removes the logs of any pod it does
  # not know, a minute or so after the pod went), so we do the same, unless some other
  # kubelet runs here.
  # The same goes for its device plugin socket and checkpoint in the fixed
  # /var/lib/kubelet/device-plugins.
  if pgrep -x kubelet >/dev/null; then
    say "k8s-stop: another kubelet runs here; /var/log/pods and /var/lib/kubelet left as they are"
  else
    rm -rf /var/log/pods/*
    find /var/log/containers -maxdepth 1 -type l -lname '/var/log/pods/*' -delete 2>/dev/null || true
    rm -f /var/lib/kubelet/device-plugins/{kubelet.sock,kubelet_internal_checkpoint,DEPRECATION}
    rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
  fi
  k8s_remove_cni_cache
  # The next start is a fresh cluster: no pods of old tests come back. Certificates,
  # binaries and the pulled images stay.
  rm -rf --one-file-system "$K8S_DIR/etcd" "$K8S_DIR/kubelet" "$K8S_RUN"
  say "k8s-stop: cluster stopped; nothing of it runs or stays mounted"
}
