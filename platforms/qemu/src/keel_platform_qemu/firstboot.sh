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
# The document is read by the awk program below (mawk is in every Debian system; jq took
# 0.5-0.8 s to start under emulation, on the path to SSH). It prints one record a line,
# fields separated by the ASCII unit separator (US), which, unlike a tab, read does not strip:
#   H<US>hostname   U<US>user   K<US>authorized key (of the last U)   N<US>mac<US>address
# Any JSON is parsed (strings with their escapes, numbers, literals, nesting); what is not
# a JSON object is an error.
READER='
function fail(what) { print "keel-qemu-firstboot: " what > "/dev/stderr"; failed = 1; exit 1 }
function peek() {
    while (pos <= n && index(" \t\r\n", substr(doc, pos, 1))) pos++
    return substr(doc, pos, 1)
}
function value(path,    c) {
    c = peek()
    if (c == "{") object(path)
    else if (c == "[") array(path)
    else if (c == "\"") { val[path] = string(); type[path] = "s" }
    else literal(path)
}
function object(path,    c, key) {
    pos++; type[path] = "o"
    if (peek() == "}") { pos++; return }
    while (1) {
        if (peek() != "\"") fail("expected a key at byte " pos)
        key = string()
        if (peek() != ":") fail("expected : at byte " pos)
        pos++
        value(path "/" key)
        c = peek(); pos++
        if (c == "}") return
        if (c != ",") fail("expected , or } at byte " pos - 1)
    }
}
function array(path,    c, i) {
    pos++; type[path] = "a"; count[path] = 0
    if (peek() == "]") { pos++; return }
    for (i = 0; ; i++) {
        value(path "/" i); count[path] = i + 1
        c = peek(); pos++
        if (c == "]") return
        if (c != ",") fail("expected , or ] at byte " pos - 1)
    }
}
function hex(text,    i, code) {
    code = 0
    for (i = 1; i <= 4; i++) {
        code = code * 16 + index("0123456789abcdef", tolower(substr(text, i, 1))) - 1
    }
    return code
}
function utf8(code) {
    if (code < 128) return sprintf("%c", code)
    if (code < 2048) return sprintf("%c%c", 192 + int(code / 64), 128 + code % 64)
    return sprintf("%c%c%c", 224 + int(code / 4096), 128 + int(code / 64) % 64, 128 + code % 64)
}
function string(    out, c, e) {
    pos++; out = ""
    while (pos <= n) {
        c = substr(doc, pos, 1)
        if (c == "\"") { pos++; return out }
        if (c != "\\") { out = out c; pos++; continue }
        e = substr(doc, pos + 1, 1); pos += 2
        if (e == "n") out = out "\n"
        else if (e == "t") out = out "\t"
        else if (e == "r") out = out "\r"
        else if (e == "b") out = out "\b"
        else if (e == "f") out = out "\f"
        else if (e == "u") {
            if (substr(doc, pos, 4) !~ /^[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]$/)
                fail("bad \\u escape at byte " pos)
            out = out utf8(hex(substr(doc, pos, 4))); pos += 4
        }
        else if (e == "\"" || e == "\\" || e == "/") out = out e
        else fail("bad escape at byte " pos - 2)
    }
    fail("unterminated string")
}
function literal(path,    rest) {
    rest = substr(doc, pos)
    if (match(rest, /^(true|false|null|-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)/)) {
        val[path] = substr(rest, 1, RLENGTH); pos += RLENGTH
        type[path] = val[path] == "null" || val[path] == "false" ? "n" : "l"
        return
    }
    fail("unexpected " (pos > n ? "end" : "character at byte " pos))
}
function text(path) { return type[path] == "s" || type[path] == "l" ? val[path] : "" }
{ doc = doc $0 "\n" }
END {
    if (failed) exit 1
    n = length(doc); pos = 1
    if (peek() != "{") fail("not a JSON object")
    value("")
    if (peek() != "") fail("trailing data at byte " pos)
    us = sprintf("%c", 31)
    print "H" us text("/hostname")
    for (i = 0; i < count["/users"]; i++) {
        print "U" us text("/users/" i "/name")
        keys = "/users/" i "/ssh_authorized_keys"
        for (j = 0; j < count[keys]; j++) print "K" us text(keys "/" j)
    }
    for (i = 0; i < count["/network/interfaces"]; i++) {
        at = "/network/interfaces/" i
        print "N" us text(at "/mac") us text(at "/address")
    }
}'
if ! records=$(awk "$READER" "$CONFIG"); then
    echo "keel-qemu-firstboot: fw_cfg opt/org.keel/config is not a JSON object" >&2
    exit 1
fi

# Builtins only, but for one mkdir, chmod and chown per user: each program started costs
# tens of milliseconds under emulation, and this runs on the path to SSH.
us=$(printf '\037')
home_of() {
    while IFS=: read -r name _ _ _ _ dir _; do
        [ "$name" = "$1" ] && { echo "$dir"; return 0; }
    done <"$ROOT/etc/passwd"
    return 1
}
finish_user() {
    # ~/.ssh 0700 and the key file 0600 (u=rwX: x on directories only), owned by the user.
    [ -n "$keys" ] || return 0
    chmod -R u=rwX,go= "$ROOT$home/.ssh"
    [ -n "$ROOT" ] || chown -R "$user:" "$home/.ssh"
}
i=0
keys=
printf '%s\n' "$records" | {
while IFS="$us" read -r kind field address; do
    case "$kind" in
    H)
        hostname=$field
        [ -n "$hostname" ] || continue
        echo "$hostname" >"$ROOT/etc/hostname"
        [ -n "$ROOT" ] || echo "$hostname" >/proc/sys/kernel/hostname
        listed=
        if [ -r "$ROOT/etc/hosts" ]; then
            while read -r addr _; do
                [ "$addr" = 127.0.1.1 ] && listed=1
            done <"$ROOT/etc/hosts"
        fi
        [ -n "$listed" ] || echo "127.0.1.1 $hostname" >>"$ROOT/etc/hosts"
        ;;
    U)
        finish_user
        user=$field
        keys=
        if ! home=$(home_of "$user") || [ -z "$home" ]; then
            echo "keel-qemu-firstboot: no user '$user' in this image, skipped" >&2
            continue
        fi
        mkdir -p "$ROOT$home/.ssh"
        keys="$ROOT$home/.ssh/authorized_keys"
        : >"$keys"
        ;;
    K)
        [ -z "$keys" ] || echo "$field" >>"$keys"
        ;;
    N)
        [ -n "$address" ] || continue
        i=$((i + 1))
        [ -d "$ROOT/etc/systemd/network" ] || mkdir -p "$ROOT/etc/systemd/network"
        printf '[Match]\nMACAddress=%s\n\n[Network]\nAddress=%s\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' \
            "$field" "$address" >"$ROOT/etc/systemd/network/10-keel-static-$i.network"
        ;;
    esac
done
finish_user
}
