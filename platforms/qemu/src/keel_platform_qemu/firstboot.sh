#!/bin/sh
# keel-qemu-firstboot: apply the first-boot config QEMU passes through fw_cfg
# (-fw_cfg name=opt/org.keel/config,file=config.json):
#   {"hostname": "node1",
#    "users": [{"name": "core", "ssh_authorized_keys": ["ssh-ed25519 ..."]}],
#    "network": {"interfaces": [{"mac": "52:54:00:..", "address": "192.0.2.11/24"}]}}
# Sets the hostname, writes authorized_keys of existing users, and a systemd-networkd
# file per interface with a static address. Missing config: nothing to do.
# KEEL_ROOT (tests) applies the config to another tree instead of this machine.
set -eu
ROOT=${KEEL_ROOT:-}
CONFIG=${KEEL_FW_CFG:-/sys/firmware/qemu_fw_cfg/by_name/opt/org.keel/config/raw}
[ -e "$CONFIG" ] || modprobe qemu_fw_cfg 2>/dev/null || true
if [ ! -r "$CONFIG" ]; then
    echo "keel-qemu-firstboot: no config in fw_cfg, nothing to do"
    exit 0
fi
json=$(cat "$CONFIG")
# One jq run per section: each start of jq costs time under emulation.
if ! hostname=$(printf '%s' "$json" |
    jq -r 'if type == "object" then .hostname // "" else error("not an object") end' 2>/dev/null)
then
    echo "keel-qemu-firstboot: fw_cfg opt/org.keel/config is not a JSON object" >&2
    exit 1
fi
if [ -n "$hostname" ]; then
    echo "$hostname" >"$ROOT/etc/hostname"
    [ -n "$ROOT" ] || echo "$hostname" >/proc/sys/kernel/hostname
    grep -q "^127.0.1.1[[:space:]]" "$ROOT/etc/hosts" 2>/dev/null ||
        echo "127.0.1.1 $hostname" >>"$ROOT/etc/hosts"
fi

# "user<US>" starts a user's keys, "<US>key" lines follow (US: the ASCII unit separator,
# which, unlike a tab, read does not strip).
printf '%s' "$json" |
    jq -r '.users // [] | .[] | "\(.name)\u001f", (.ssh_authorized_keys // [] | .[] | "\u001f\(.)")' |
while IFS="$(printf '\037')" read -r user key; do
    if [ -n "$user" ]; then
        home=$(awk -F: -v u="$user" '$1 == u { print $6 }' "$ROOT/etc/passwd")
        keys=
        if [ -z "$home" ]; then
            echo "keel-qemu-firstboot: no user '$user' in this image, skipped" >&2
            continue
        fi
        mkdir -p "$ROOT$home/.ssh"
        keys="$ROOT$home/.ssh/authorized_keys"
        : >"$keys"
        chmod 700 "$ROOT$home/.ssh"
        chmod 600 "$keys"
        [ -n "$ROOT" ] || chown -R "$user:" "$home/.ssh"
    elif [ -n "${keys:-}" ]; then
        echo "$key" >>"$keys"
    fi
done

mkdir -p "$ROOT/etc/systemd/network"
i=0
printf '%s' "$json" | jq -r '.network.interfaces // [] | .[] | "\(.mac) \(.address // "")"' |
while read -r mac address; do
    [ -n "$address" ] || continue
    i=$((i + 1))
    cat >"$ROOT/etc/systemd/network/10-keel-static-$i.network" <<NET
[Match]
MACAddress=$mac

[Network]
Address=$address
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
done
