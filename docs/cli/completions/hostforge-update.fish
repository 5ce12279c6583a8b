# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hostforge_update_global_optspecs
    string join \n h/help V/version
end

function __fish_hostforge_update_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hostforge_update_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hostforge_update_using_subcommand
    set -l cmd (__fish_hostforge_update_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -s V -l version -d 'Print version'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "check" -d 'One pass: give back a held reboot lock, pull, stage, reboot if the strategy allows'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "status" -d 'What the agent last did, the booted and staged commits, and the configuration'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "health" -d 'Run the health checks in /usr/lib/hostforge/health.d and /etc/hostforge/health.d'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "boot-complete" -d 'Judge this boot after boot-complete.target: end the trial, reboot, or go back'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "generate" -d 'The systemd generator: health check units become required by boot-complete.target'
complete -c hostforge-update -n "__fish_hostforge_update_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand check" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand status" -l json -d 'Print JSON'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand status" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand health" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand boot-complete" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand generate" -s h -l help -d 'Print help'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "check" -d 'One pass: give back a held reboot lock, pull, stage, reboot if the strategy allows'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "status" -d 'What the agent last did, the booted and staged commits, and the configuration'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "health" -d 'Run the health checks in /usr/lib/hostforge/health.d and /etc/hostforge/health.d'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "boot-complete" -d 'Judge this boot after boot-complete.target: end the trial, reboot, or go back'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "generate" -d 'The systemd generator: health check units become required by boot-complete.target'
complete -c hostforge-update -n "__fish_hostforge_update_using_subcommand help; and not __fish_seen_subcommand_from check status health boot-complete generate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
