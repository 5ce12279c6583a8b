#!/bin/bash
# hostforge's ostree module for dracut: puts ostree-prepare-root and its unit into the
# initramfs so the initramfs can find the deployment named by the ostree= kernel argument.
# Written by `hostforge dracut emit` and installed by `hostforge compose tree`.

check() {
    # Only when asked for (dracut --add), and only where the pieces exist.
    require_binaries /usr/lib/ostree/ostree-prepare-root || return 1
    return 255
}

depends() {
    echo systemd
    return 0
}

install() {
    inst_binary /usr/lib/ostree/ostree-prepare-root
    if [[ -e "$moddir/prepare-root.conf" ]]; then
        inst_simple "$moddir/prepare-root.conf" /usr/lib/ostree/prepare-root.conf
    elif [[ -e /usr/lib/ostree/prepare-root.conf ]]; then
        inst_simple /usr/lib/ostree/prepare-root.conf
    fi
    inst_simple "$moddir/ostree-prepare-root.service" \
        "$systemdsystemunitdir/ostree-prepare-root.service"
    mkdir -p "${initdir}${systemdsystemconfdir}/initrd-root-fs.target.wants"
    ln_r "$systemdsystemunitdir/ostree-prepare-root.service" \
        "$systemdsystemconfdir/initrd-root-fs.target.wants/ostree-prepare-root.service"
}
