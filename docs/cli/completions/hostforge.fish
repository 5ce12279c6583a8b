# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hostforge_global_optspecs
    string join \n h/help V/version
end

function __fish_hostforge_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hostforge_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hostforge_using_subcommand
    set -l cmd (__fish_hostforge_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hostforge -n "__fish_hostforge_needs_command" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_needs_command" -s V -l version -d 'Print version'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "compose" -d 'Compose operating system trees from RPM repositories'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "dracut" -d 'Work with hostforge\'s ostree dracut module'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "provision" -d 'Render kickstart, PXE/GRUB/iPXE and Foreman files for a network install'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "image" -d 'Build bootable disk images from commits'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "install" -d 'Install a commit onto a disk: partitions, filesystems, deployment, boot loader and the first-boot config'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "toolbox" -d 'Build debug toolbox container images'
complete -c hostforge -n "__fish_hostforge_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and not __fish_seen_subcommand_from tree help" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and not __fish_seen_subcommand_from tree help" -f -a "tree" -d 'Compose a treefile into an ostree commit'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and not __fish_seen_subcommand_from tree help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l repo -d 'The ostree repository to commit into (archive or bare)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l cachedir -d 'Cache for repo metadata, packages and builds' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l write-commitid-to -d 'Write the commit checksum to FILE' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l write-composejson-to -d 'Write a JSON summary of the compose to FILE' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l add-metadata-string -d 'Add KEY=VALUE string metadata to the commit (repeatable)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l ex-lockfile -d 'Pin packages to an rpm-ostree lockfile (JSON or YAML; repeatable, a later file\'s entry for a package wins)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l ex-write-lockfile-to -d 'Write the resolved package set as an rpm-ostree lockfile to FILE' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l gpg-sign -d 'Sign the commit and the repo summary with this GPG key (wins over the treefile\'s `gpg-key`)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l gpg-homedir -d 'GnuPG home directory holding the signing key' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l force-nocache -d 'Compose even if the inputs did not change'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l dry-run -d 'Resolve and print the package set; write nothing'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l print-only -d 'Print the flattened treefile (includes merged) as JSON and exit; no repo, cache or network is touched'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l ex-lockfile-strict -d 'Install nothing but packages the lockfiles pin'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l static-delta -d 'After moving the ref, generate a static delta from its previous commit (listed in the regenerated summary), so nodes on that commit download one delta'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l rebuild-initramfs -d 'Run dracut even when the initramfs kept in the cachedir was built from the same kernel, dracut, configuration and files'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l disable-selinux -d 'Do not label the files with the tree\'s SELinux policy, even if the treefile asks for it'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -s q -l quiet -d 'Print nothing but errors'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -l json -d 'Print progress and the summary as JSON lines'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from tree" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from help" -f -a "tree" -d 'Compose a treefile into an ostree commit'
complete -c hostforge -n "__fish_hostforge_using_subcommand compose; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and not __fish_seen_subcommand_from emit help" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and not __fish_seen_subcommand_from emit help" -f -a "emit" -d 'Write the ostree dracut module into a modules.d directory'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and not __fish_seen_subcommand_from emit help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from emit" -l out -d 'The modules.d directory to write NNNAME/ into' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from emit" -l name -d 'Module name, as passed to `dracut --add`' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from emit" -l number -d 'Ordering number of the module directory (00-99)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from emit" -l prepare-root -d 'Add SECTION.KEY=VALUE to prepare-root.conf (e.g. sysroot.readonly=true)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from emit" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from help" -f -a "emit" -d 'Write the ostree dracut module into a modules.d directory'
complete -c hostforge -n "__fish_hostforge_using_subcommand dracut; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -l repo -d 'The archive-mode ostree repo that URL serves' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -l ref -d 'The ref to install' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -l url -d 'The HTTP(S) URL installers pull the repo from' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -l out -d 'Directory to write ks/, tftp/ and foreman/ into (replaced whole)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -l spec -d 'Provisioning spec (YAML): users, disk, network, kernel args, %post' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand provision" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "build" -d 'Build a raw or qcow2 disk image with the ref deployed'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "deploy" -d 'Deploy a ref as the new default, keeping the old one as rollback'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "status" -d 'Show the deployments of an image or sysroot, default first'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "rollback" -d 'Make the rollback deployment the default, atomically'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "pin" -d 'Pin a deployment so later deploys do not prune it (or --unpin it)'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and not __fish_seen_subcommand_from build deploy status rollback pin help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l repo -d 'The ostree repo holding the ref' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l ref -d 'The ref to deploy as the default' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l previous -d 'Deploy this ref first, so the image ships with a rollback entry' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l layout -d 'Disk layout (images/*.yaml)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l format -d 'Output format (default: the layout\'s)' -r -f -a "raw\t''
qcow2\t''"
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l compress -d 'Compress the image: zstd clusters in qcow2, a zstd stream for raw' -r -f -a "zstd\t''"
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l tmpdir -d 'Scratch space for the staging sysroot and intermediate disk (default: /dev/shm when it has room for twice the layout\'s disk size, else beside the output)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l remote-url -d 'URL of the ostree repo the node updates from (http://, https:// or file:///); the deployments follow REMOTE:REF' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l remote-name -d 'Name of that remote on the node' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l remote-gpg-key -d 'The GPG public key (armored or binary) the node trusts for the remote\'s commits and summary; gpg-verify is on' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l first-boot -d 'The first-boot config, a provisioning spec (its network, root-password-hash, ssh-keys, kargs and timezone), so somebody can log in to the image' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -s o -l output -d 'The image file to write (replaced only when complete)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l random-uuids -d 'Random disk, partition and filesystem IDs instead of the layout\'s fixed ones'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -s q -l quiet -d 'Print nothing but errors and the output path'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -l remote-no-gpg-verify -d 'Follow the remote without verifying signatures (instead of --remote-gpg-key)'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from build" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from deploy" -l sysroot -d 'Work on a live sysroot instead (`/` on a booted node)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from deploy" -l repo -d 'The ostree repo holding the ref' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from deploy" -l ref -d 'The ref to deploy' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from deploy" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from status" -l sysroot -d 'Work on a live sysroot instead (`/` on a booted node)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from status" -l json -d 'Print JSON'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from rollback" -l sysroot -d 'Work on a live sysroot instead (`/` on a booted node)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from rollback" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from pin" -l sysroot -d 'Work on a live sysroot instead (`/` on a booted node)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from pin" -l index -d 'The deployment\'s index in `image status` (0 is the default)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from pin" -l unpin -d 'Remove the pin instead'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from pin" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "build" -d 'Build a raw or qcow2 disk image with the ref deployed'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "deploy" -d 'Deploy a ref as the new default, keeping the old one as rollback'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show the deployments of an image or sysroot, default first'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "rollback" -d 'Make the rollback deployment the default, atomically'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "pin" -d 'Pin a deployment so later deploys do not prune it (or --unpin it)'
complete -c hostforge -n "__fish_hostforge_using_subcommand image; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l device -d 'The disk to install onto (a block device, or a raw file standing for one); everything on it is replaced' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l layout -d 'Disk layout (images/*.yaml); the last partition grows to fill the disk' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l repo -d 'A local ostree repo holding the ref' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l url -d 'The ostree repo to pull from over the network (http:// or https://); signatures are verified with --gpg-key, and the node follows this remote for updates' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l ref -d 'The ref to install' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l gpg-key -d 'The GPG public key (armored or binary) the commits and summary must be signed with; the node keeps trusting it for its updates' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l remote-url -d 'The URL the node follows for updates, when it reaches the repo by another address than the installer (default: --url)' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l remote-name -d 'Name of that remote on the node' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l config -d 'The first-boot config, a provisioning spec (its network, root-password-hash, ssh-keys, kargs and timezone)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l tmpdir -d 'Scratch space for the sysroot (default: /dev/shm)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -l no-gpg-verify -d 'Install from --url without verifying signatures (instead of --gpg-key)'
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -s q -l quiet -d 'Print nothing but errors and the device'
complete -c hostforge -n "__fish_hostforge_using_subcommand install" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and not __fish_seen_subcommand_from build help" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and not __fish_seen_subcommand_from build help" -f -a "build" -d 'Compose a `container: true` treefile and build its image with buildah'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and not __fish_seen_subcommand_from build help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l tag -d 'The image name, REGISTRY/NAME:TAG' -r
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l oci-dir -d 'Also write the image as an OCI layout directory' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l tls-verify -d 'Require HTTPS and verify certificates (false for a plain-HTTP registry)' -r -f -a "true\t''
false\t''"
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l authfile -d 'Registry credentials (containers-auth.json)' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l cachedir -d 'Cache for packages, builds and buildah\'s storage' -r -F
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l push -d 'Push the image to the registry in --tag'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -s q -l quiet -d 'Print nothing but errors and the result'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -l json -d 'Print the result as JSON'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from build" -s h -l help -d 'Print help'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from help" -f -a "build" -d 'Compose a `container: true` treefile and build its image with buildah'
complete -c hostforge -n "__fish_hostforge_using_subcommand toolbox; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "compose" -d 'Compose operating system trees from RPM repositories'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "dracut" -d 'Work with hostforge\'s ostree dracut module'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "provision" -d 'Render kickstart, PXE/GRUB/iPXE and Foreman files for a network install'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "image" -d 'Build bootable disk images from commits'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "install" -d 'Install a commit onto a disk: partitions, filesystems, deployment, boot loader and the first-boot config'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "toolbox" -d 'Build debug toolbox container images'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and not __fish_seen_subcommand_from compose dracut provision image install toolbox help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from compose" -f -a "tree" -d 'Compose a treefile into an ostree commit'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from dracut" -f -a "emit" -d 'Write the ostree dracut module into a modules.d directory'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "build" -d 'Build a raw or qcow2 disk image with the ref deployed'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "deploy" -d 'Deploy a ref as the new default, keeping the old one as rollback'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "status" -d 'Show the deployments of an image or sysroot, default first'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "rollback" -d 'Make the rollback deployment the default, atomically'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from image" -f -a "pin" -d 'Pin a deployment so later deploys do not prune it (or --unpin it)'
complete -c hostforge -n "__fish_hostforge_using_subcommand help; and __fish_seen_subcommand_from toolbox" -f -a "build" -d 'Compose a `container: true` treefile and build its image with buildah'
