#!/bin/sh
# Installs a ferry node on a systemd machine; safe to run again (an upgrade
# replaces the binary and unit, and keeps the data directory).
#
#   sudo deploy/install.sh [--binary PATH] [--name NODE_NAME] [--no-start]
#
# - the binary to /usr/local/bin/ferry (default: ./ferry, or
#   target/release/ferry of this checkout)
# - a `ferry` system user, and /var/lib/ferry owned by it, mode 0700
# - the systemd unit, enabled; started once the node is enrolled
# - manual pages (man ferry) and bash completion
# - with --name, `ferry init` for a new node (its certificate comes next:
#   `ferry csr` to send to the CA, `ferry cert install` with the answer)
#
# ROOT=DIR installs into DIR instead of / (for images and tests); the unit
# is then enabled without a running systemd.
set -eu

ROOT=${ROOT:-}
BINARY=
NAME=
START=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) BINARY=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --no-start) START=no; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$BINARY" ]; then
  for candidate in ./ferry "$here/../target/release/ferry"; do
    if [ -x "$candidate" ]; then BINARY=$candidate; break; fi
  done
fi
if [ -z "$BINARY" ] || [ ! -x "$BINARY" ]; then
  echo "install.sh: no ferry binary found; build it (cargo build --release) or pass --binary PATH" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run it as root (sudo), it creates a system user and installs a service" >&2
  exit 1
fi

bin=$ROOT/usr/local/bin/ferry
unit=$ROOT/etc/systemd/system/ferry.service
data=$ROOT/var/lib/ferry

install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system"
# Replace the binary in one rename, so a running node is never left with a
# half-written file.
install -m 0755 "$BINARY" "$bin.new"
mv -f "$bin.new" "$bin"
install -m 0644 "$here/ferry.service" "$unit"
# Manual pages and bash completion, from the binary itself.
install -d -m 0755 "$ROOT/usr/local/share/man/man1" "$ROOT/usr/local/share/bash-completion/completions"
"$bin" man --dir "$ROOT/usr/local/share/man/man1"
"$bin" completions bash > "$ROOT/usr/local/share/bash-completion/completions/ferry"

if [ -n "$ROOT" ]; then rootopt="--root $ROOT"; else rootopt=; fi
if ! grep -q '^ferry:' "$ROOT/etc/passwd" 2>/dev/null; then
  # shellcheck disable=SC2086
  useradd $rootopt --system --user-group --home-dir /var/lib/ferry --no-create-home \
    --shell /usr/sbin/nologin --comment "ferry replication node" ferry
fi
install -d -m 0700 "$data"
uid=$(grep '^ferry:' "$ROOT/etc/passwd" | cut -d: -f3)
gid=$(grep '^ferry:' "$ROOT/etc/passwd" | cut -d: -f4)
chown -R "$uid:$gid" "$data"
chmod 0700 "$data"

if [ -n "$NAME" ] && [ ! -e "$data/config.toml" ]; then
  if [ -n "$ROOT" ]; then
    "$bin" init --data-dir "$data" --name "$NAME"
    chown -R "$uid:$gid" "$data"
  else
    setpriv --reuid="$uid" --regid="$gid" --clear-groups "$bin" init --data-dir "$data" --name "$NAME"
  fi
fi

enrolled=no
[ -e "$data/node.crt" ] && enrolled=yes
if [ -n "$ROOT" ] || [ ! -d /run/systemd/system ]; then
  # No running systemd (an image, a container, a test): enable offline.
  if ! systemctl --root="${ROOT:-/}" enable ferry.service >/dev/null 2>&1; then
    install -d "$ROOT/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/ferry.service "$ROOT/etc/systemd/system/multi-user.target.wants/ferry.service"
  fi
  echo "installed ferry $("$bin" --version | cut -d' ' -f2-) into ${ROOT:-/}; the unit is enabled"
else
  systemctl daemon-reload
  systemctl enable ferry.service
  if [ "$START" = yes ] && [ "$enrolled" = yes ]; then
    systemctl restart ferry.service
    echo "ferry is running: journalctl -u ferry -f, ferry status --data-dir /var/lib/ferry"
  fi
fi
if [ "$enrolled" = no ]; then
  if [ -e "$data/config.toml" ]; then
    echo "next: enrol this node. Send the request to the CA:"
    echo "  sudo -u ferry ferry csr --data-dir /var/lib/ferry --out node.csr"
    echo "then install the CA's answer and start it:"
    echo "  sudo -u ferry ferry cert install --data-dir /var/lib/ferry --cert node.pem && sudo systemctl start ferry"
  else
    echo "next: sudo -u ferry ferry init --data-dir /var/lib/ferry --name NODE_NAME, then enrol it (ferry csr)"
  fi
fi
