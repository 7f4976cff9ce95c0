#!/usr/bin/env bash
# Builds rswarm (release) and installs rswarm, rswarm-manager, rswarm-agent and rswarm-shim into
# $PREFIX/bin (default /usr/local), plus the systemd units when systemd is present; installs runc,
# tini and iptables from Debian. Run as root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
prefix="${PREFIX:-/usr/local}"

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh must run as root (it writes $prefix/bin and /etc/systemd/system)" >&2
  exit 1
fi
if command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iproute2 util-linux procps ca-certificates runc tini iptables >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (https://rustup.rs) and run this again" >&2
  exit 1
fi

(cd "$root" && cargo build --release --locked -p rswarm)
install -d "$prefix/bin"
for b in rswarm rswarm-manager rswarm-agent rswarm-shim; do
  install -m 0755 "$root/target/release/$b" "$prefix/bin/$b"
done
install -d -m 0700 /var/lib/rswarm

if [ -d /run/systemd/system ]; then
  install -m 0644 "$here/systemd/rswarm-manager.service" /etc/systemd/system/
  install -m 0644 "$here/systemd/rswarm-agent.service" /etc/systemd/system/
  systemctl daemon-reload
  echo "installed systemd units rswarm-manager.service and rswarm-agent.service"
fi
echo "installed rswarm $("$prefix/bin/rswarm" --version | awk '{print $2}') into $prefix/bin"
