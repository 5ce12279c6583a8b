#!/bin/sh
# An installer has no root filesystem to wait for: with hostforge.inst.url= given, the
# initramfs takes the installer as its "root", so dracut goes on to the pre-mount hook,
# where hostforge-installer.sh installs and reboots.
if [ -n "$(getarg hostforge.inst.url=)" ]; then
    root=hostforge-installer
    rootok=1
    export root rootok
fi
