#!/bin/bash
# hostforge's live installer for dracut: a network-booted initramfs that installs a node
# onto a disk with `hostforge install`, as the kernel arguments hostforge.inst.* say, then
# reboots into it. Built by `hostforge provision` (spec: `installer: hostforge`), which
# passes the trusted key, the first-boot config and the layouts with --include.
# `hostforge install` needs what it runs: mkfs.ext4, mtools, grub-mkimage and GRUB's
# modules, gpg (through gpgme, for signatures), chattr; busybox brings DHCP and wget.

check() {
    # Only when asked for: it is never a part of a node's own initramfs.
    return 255
}

depends() {
    echo base udev-rules kernel-modules
    return 0
}

installkernel() {
    # Wired network drivers (Debian packs dracut's network modules apart).
    instmods virtio_net '=drivers/net/ethernet'
}

install() {
    # The hostforge that builds the installer (provision names itself in HOSTFORGE_BIN).
    inst_binary "${HOSTFORGE_BIN:-$(command -v hostforge)}" /usr/bin/hostforge
    inst_multiple mkfs.ext4 mformat mcopy grub-mkimage chattr busybox \
        gpg gpgconf gpg-agent gpgv sync
    # GRUB's images and modules, for grub-mkimage (BIOS and UEFI).
    local d f
    for d in /usr/lib/grub/i386-pc /usr/lib/grub/x86_64-efi; do
        for f in "$d"/*; do
            inst_simple "$f"
        done
    done
    # mtools converts FAT labels through iconv: glibc's gconv modules for codepage 850.
    for f in /usr/lib/*/gconv/gconv-modules /usr/lib/*/gconv/gconv-modules.cache \
        /usr/lib/*/gconv/gconv-modules.d/* /usr/lib/*/gconv/IBM850.so; do
        [[ -e $f ]] && inst_simple "$f"
    done
    inst_hook cmdline 90 "$moddir/parse-hostforge-inst.sh"
    inst_hook pre-mount 90 "$moddir/hostforge-installer.sh"
    inst_simple "$moddir/udhcpc.script" /usr/lib/hostforge-installer/udhcpc.script
    chmod 0755 "${initdir}/usr/lib/hostforge-installer/udhcpc.script"
}
