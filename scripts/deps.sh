#!/bin/sh
# Installs the Debian packages quoin builds and tests with, only those missing.
# Called by `make run` and `make test`, so a fresh Debian 12 machine needs
# nothing installed by hand. Pass --runtime to install only what building and
# running the server needs.
set -eu

BUILD_PKGS="make gcc libc6-dev pkg-config clang-format libuv1-dev libnghttp2-dev \
libprotobuf-c-dev protobuf-c-compiler liblmdb-dev libssl-dev libyaml-dev"
TEST_PKGS="libcmocka-dev python3 python3-pytest etcd-client etcd-server \
python3-etcd3 python3-etcd3gw python3-grpcio openssl curl iproute2 procps nftables"

pkgs="$BUILD_PKGS"
if [ "${1:-}" != "--runtime" ]; then
    pkgs="$pkgs $TEST_PKGS"
fi

missing=""
for p in $pkgs; do
    if ! dpkg -s "$p" >/dev/null 2>&1; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
