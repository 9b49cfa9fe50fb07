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
# One jq run for the whole document (each start of jq costs 0.3-0.5 s under emulation, and
# this unit is on the path to SSH). It prints one record a line, fields separated by the
# ASCII unit separator (US), which, unlike a tab, read does not strip:
#   H<US>hostname   U<US>user   K<US>authorized key (of the last U)   N<US>mac<US>address
if ! records=$(jq -r '
    if type != "object" then error("not an object") else
        "H\u001f\(.hostname // "")",
        (.users // [] | .[] |
            "U\u001f\(.name)", (.ssh_authorized_keys // [] | .[] | "K\u001f\(.)")),
        (.network.interfaces // [] | .[] | "N\u001f\(.mac)\u001f\(.address // "")")
    end' "$CONFIG" 2>/dev/null)
then
    echo "keel-qemu-firstboot: fw_cfg opt/org.keel/config is not a JSON object" >&2
    exit 1
fi

mkdir -p "$ROOT/etc/systemd/network"
i=0
keys=
printf '%s\n' "$records" |
while IFS="$(printf '\037')" read -r kind field address; do
    case "$kind" in
    H)
        hostname=$field
        [ -n "$hostname" ] || continue
        echo "$hostname" >"$ROOT/etc/hostname"
        [ -n "$ROOT" ] || echo "$hostname" >/proc/sys/kernel/hostname
        grep -q "^127.0.1.1[[:space:]]" "$ROOT/etc/hosts" 2>/dev/null ||
            echo "127.0.1.1 $hostname" >>"$ROOT/etc/hosts"
        ;;
    U)
        user=$field
        keys=
        home=$(awk -F: -v u="$user" '$1 == u { print $6 }' "$ROOT/etc/passwd")
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
        ;;
    K)
        [ -z "$keys" ] || echo "$field" >>"$keys"
        ;;
    N)
        [ -n "$address" ] || continue
        i=$((i + 1))
        cat >"$ROOT/etc/systemd/network/10-keel-static-$i.network" <<NET
[Match]
MACAddress=$field

[Network]
Address=$address
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
        ;;
    esac
done
