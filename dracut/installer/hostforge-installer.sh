#!/bin/sh
# hostforge's live installer (a dracut pre-mount hook): brings up the network with DHCP,
# runs `hostforge install` with what the kernel arguments say, shows its progress and any
# error on the console, then reboots into the installed node (or powers off).
#
#   hostforge.inst.url=URL        the ostree repo to install from (required)
#   hostforge.inst.ref=REF        the ref to install (required)
#   hostforge.inst.device=DEV     the disk, e.g. /dev/vda (required)
#   hostforge.inst.layout=NAME    a layout in /etc/hostforge/installer/layouts (default metal)
#   hostforge.inst.config=URL     a first-boot config to fetch instead of the built-in one
#   hostforge.inst.done-url=URL   fetched once installed (Foreman's "built" callback)
#   hostforge.inst.poweroff       power off when done instead of rebooting
#
# Every value goes to hostforge as one argument (never through eval), which checks it.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

url=$(getarg hostforge.inst.url=)
[ -n "$url" ] || return 0

say() {
    echo "hostforge-installer: $*" > /dev/console
}

fail() {
    say "FAILED: $*"
    say "the disk holds no bootable system; fix the cause and network-boot again"
    while :; do
        sleep 3600
    done
}

dir=/etc/hostforge/installer
ref=$(getarg hostforge.inst.ref=)
device=$(getarg hostforge.inst.device=)
layout=$(getarg hostforge.inst.layout=)
config_url=$(getarg hostforge.inst.config=)
done_url=$(getarg hostforge.inst.done-url=)
[ -n "$ref" ] || fail "hostforge.inst.ref= is missing from the kernel command line"
[ -n "$device" ] || fail "hostforge.inst.device= is missing from the kernel command line"
case "${layout:=metal}" in
    *[!a-z0-9_-]*) fail "hostforge.inst.layout=$layout: give a layout name such as metal" ;;
esac
[ -f "$dir/layouts/$layout.yaml" ] || fail "no layout $layout in this installer"

say "installing $ref from $url onto $device (layout $layout)"
up=
for link in /sys/class/net/*; do
    name=${link##*/}
    [ "$name" = lo ] && continue
    busybox ip link set "$name" up
    if busybox udhcpc -i "$name" -n -q -t 10 -T 2 -s /usr/lib/hostforge-installer/udhcpc.script \
        > /dev/null 2>&1; then
        up=$name
        break
    fi
done
[ -n "$up" ] || fail "no network: DHCP got no lease on any link"
say "network up on $up: $(busybox ip -4 -o addr show dev "$up" | busybox awk '{print $4}')"

config=$dir/config.yaml
if [ -n "$config_url" ]; then
    say "fetching the first-boot config from $config_url"
    busybox wget -q -O /tmp/first-boot.yaml "$config_url" \
        || fail "could not fetch the first-boot config from $config_url"
    config=/tmp/first-boot.yaml
fi

set -- --device "$device" --layout "$dir/layouts/$layout.yaml" --url "$url" --ref "$ref"
if [ -f "$dir/trusted.gpg" ]; then
    set -- "$@" --gpg-key "$dir/trusted.gpg"
else
    say "WARNING: no trusted key in this installer; installing without verifying signatures"
    set -- "$@" --no-gpg-verify
fi
[ -f "$config" ] && set -- "$@" --config "$config"

export HOME=/tmp
if ! hostforge install "$@" > /dev/console 2>&1; then
    fail "hostforge install failed (the reason is above)"
fi
sync
if [ -n "$done_url" ]; then
    busybox wget -q -O /dev/null "$done_url" || say "WARNING: could not report to $done_url"
fi
if getargbool 0 hostforge.inst.poweroff; then
    say "installed $ref on $device; powering off"
    echo o > /proc/sysrq-trigger
else
    say "installed $ref on $device; rebooting into it"
    echo b > /proc/sysrq-trigger
fi
sleep 30
