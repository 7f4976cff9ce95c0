#!/usr/bin/env bash
# Brings up a working single-manager rswarm cluster on this host with the embedded raft store:
# installs rswarm (deploy/install.sh), runs `rswarm init`, waits until the node is Ready, and prints
# how to join workers.
#
#   deploy/up.sh [--advertise-addr IP] [any other `rswarm init` flag]      (as root)
#
# With systemd the manager runs as rswarm-manager.service after the first start; without it, the
# manager keeps running in the background with its log in /var/log/rswarm-manager.log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/install.sh"

state_dir=/var/lib/rswarm
socket=/run/rswarm/rswarm.sock
args=("$@")
if ! printf '%s\n' "${args[@]+"${args[@]}"}" | grep -q -- '--advertise-addr'; then
  addr="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="src") print $(i+1)}' | head -n1)"
  args+=(--advertise-addr "${addr:-127.0.0.1}")
fi

if [ -f "$state_dir/node.json" ]; then
  echo "a node already lives in $state_dir; resuming it"
  if [ -d /run/systemd/system ]; then
    systemctl enable --now rswarm-manager.service
  else
    nohup rswarm-manager --state-dir "$state_dir" --socket "$socket" >>/var/log/rswarm-manager.log 2>&1 &
  fi
else
  # init prints the join command, then runs the manager in the foreground: keep it in the background.
  nohup rswarm init --state-dir "$state_dir" --socket "$socket" "${args[@]}" >/var/log/rswarm-manager.log 2>&1 &
fi

for _ in $(seq 1 100); do
  if rswarm --host "unix://$socket" node ls 2>/dev/null | grep -q Ready; then
    break
  fi
  sleep 0.2
done
rswarm --host "unix://$socket" node ls
echo
rswarm --host "unix://$socket" join-token worker
if [ -d /run/systemd/system ] && ! systemctl is-active --quiet rswarm-manager.service; then
  echo "to run the manager under systemd from now on: kill the background 'rswarm init' and run"
  echo "  systemctl enable --now rswarm-manager.service"
fi
