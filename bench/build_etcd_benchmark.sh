#!/usr/bin/env bash
# Build etcd's Go `benchmark` tool (tools/benchmark) offline, from Debian packages only.
#
#   bash bench/build_etcd_benchmark.sh        # -> bench/.build/bin/benchmark
#
# - installs golang-go and golang-etcd-server-dev with apt-get if missing (every Go
#   dependency then lives under /usr/share/gocode);
# - fetches etcd's Debian source package with `apt-get source --download-only etcd`,
#   through a private deb-src sources list (and private apt lists/cache) for the mirror
#   apt already uses, so the system's apt configuration is left untouched;
# - unpacks it and builds in GOPATH mode (GO111MODULE=off GOPROXY=off).
# Idempotent: does nothing when the binary already exists (FORCE=1 rebuilds).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD="$HERE/.build"
BIN="$BUILD/bin/benchmark"

if [[ -x "$BIN" && "${FORCE:-0}" != 1 ]]; then
    echo "etcd benchmark tool already built: $BIN"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

# 1. Toolchain and Go dependencies from Debian.
missing=()
for pkg in golang-go golang-etcd-server-dev dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# 2. A private deb-src list for the mirror and suite apt already uses for etcd.
APT_DIR="$BUILD/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$BUILD/src" "$BUILD/bin"
# e.g. "500 http://deb.debian.org/debian bookworm/main amd64 Packages"
read -r MIRROR SUITE_COMP < <(apt-cache policy golang-etcd-server-dev \
    | awk '$1 ~ /^[0-9]+$/ && $2 ~ /^(https?|file):/ {print $2, $3; exit}')
if [[ -z "${MIRROR:-}" ]]; then
    echo "cannot find the Debian mirror that serves golang-etcd-server-dev (apt-cache policy)" >&2
    exit 1
fi
SUITE="${SUITE_COMP%%/*}"
COMP="${SUITE_COMP#*/}"
[[ "$COMP" == "$SUITE_COMP" ]] && COMP=main
echo "deb-src $MIRROR $SUITE $COMP" > "$APT_DIR/sources.list"
echo "source mirror: $(cat "$APT_DIR/sources.list")"

APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o "Dir::Etc::SourceParts=$APT_DIR/none.d"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
)
# apt downloads as the unprivileged _apt user, who cannot write into our folders.
if [[ $(id -u) -eq 0 ]]; then APT_OPTS+=(-o "APT::Sandbox::User=root"); fi
mkdir -p "$APT_DIR/none.d"

# 3. Fetch and unpack etcd's source package.
SRC_DIR="$(find "$BUILD/src" -maxdepth 1 -mindepth 1 -type d -name 'etcd-*' | head -n1)"
if [[ -z "$SRC_DIR" ]]; then
    apt-get "${APT_OPTS[@]}" update -qq
    (cd "$BUILD/src" && apt-get "${APT_OPTS[@]}" source --download-only etcd)
    DSC="$(ls "$BUILD"/src/etcd_*.dsc | head -n1)"
    (cd "$BUILD/src" && dpkg-source --no-check -x "$DSC")
    SRC_DIR="$(find "$BUILD/src" -maxdepth 1 -mindepth 1 -type d -name 'etcd-*' | head -n1)"
fi
[[ -d "$SRC_DIR/tools/benchmark" ]] || { echo "no tools/benchmark in $SRC_DIR" >&2; exit 1; }

# 4. GOPATH-mode build: the unpacked tree provides go.etcd.io/etcd, /usr/share/gocode the rest.
GOTREE="$BUILD/gopath"
mkdir -p "$GOTREE/src/go.etcd.io"
ln -sfn "$SRC_DIR" "$GOTREE/src/go.etcd.io/etcd"
echo "building tools/benchmark (GOPATH mode, offline) ..."
(
    cd "$GOTREE/src/go.etcd.io/etcd/tools/benchmark"
    export GOPATH="$GOTREE:/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS=
    export GOCACHE="$BUILD/gocache"
    go build -o "$BIN" .
)
"$BIN" --help >/dev/null
echo "built $BIN"
