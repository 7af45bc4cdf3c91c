#!/usr/bin/env bash
# make demo: starts hyperd in the background if it is not running, loads busybox, runs a pod.
set -euo pipefail
cd "$(dirname "$0")/.."
HYPERCTL=.venv/bin/hyperctl
LOG=${HYPERD_LOG:-/var/log/hyperd.log}

if ! $HYPERCTL version >/dev/null 2>&1; then
  echo ">> starting hyperd (log: $LOG)"
  setsid .venv/bin/hyperd >>"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 600); do
    $HYPERCTL version >/dev/null 2>&1 && break
    if ! kill -0 $! 2>/dev/null; then echo "hyperd failed to start:" >&2; tail -20 "$LOG" >&2; exit 1; fi
    sleep 0.5
  done
fi
if ! $HYPERCTL images | grep -q '^busybox '; then
  $HYPERCTL load -i build/busybox.tar
fi
$HYPERCTL info | sed -n '1,3p'
echo ">> hyperctl run --rm busybox echo hello from a VM"
$HYPERCTL run --rm busybox echo hello from a VM
if $HYPERCTL info | grep -q '^Own kernel:'; then
  echo ">> that pod booted the distribution's kernel; hyperd is building ours in the background and switches to it"
  echo "   when it is ready (hyperctl info: 'Own kernel'; hyperctl events: 'daemon kernel-switch')"
fi
