#!/usr/bin/env bash
# Valkey 8 for the tests of ack_fsync: the Redis 7.2 fork, with WAITAOF, which Debian's
# Redis here (7.0) lacks. Debian ships it in bookworm-backports; apt fetches the package
# and checks it against Debian's signed index, into a private apt state (nothing on the
# machine's apt sources changes and nothing is installed system-wide), and the binary is
# unpacked into $1. Debian's valkey-server package only adds a symlink and a service unit.
set -euo pipefail
dest=$(realpath -m "${1:?usage: fetch_valkey.sh DEST}")
# The version the tests were last run against. Backports keeps only its newest build: when
# this one is gone, take the newest and say so (any Valkey 8 has WAITAOF).
pinned='8.0.1+dfsg1-1~bpo12+1'
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$dest"
echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$work/sources.list"
apt=(apt-get -q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State="$work/state" -o Dir::Cache="$work/cache" -o Debug::NoLocking=1
     -o APT::Sandbox::User="$(id -un)")
"${apt[@]}" update >/dev/null
cd "$work"
if ! "${apt[@]}" download "valkey-tools=$pinned" >/dev/null 2>&1; then
  echo "valkey-tools $pinned is no longer in bookworm-backports: taking its newest" >&2
  "${apt[@]}" download valkey-tools >/dev/null
fi
dpkg-deb -x valkey-tools_*.deb "$dest"
# One binary is every tool; it acts as the server under that name.
ln -sf valkey-check-rdb "$dest/usr/bin/valkey-server"
"$dest/usr/bin/valkey-server" --version
