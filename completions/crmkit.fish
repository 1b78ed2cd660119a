# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_crmkit_global_optspecs
    string join \n server= profile= json format= h/help V/version
end

function __fish_crmkit_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_crmkit_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_crmkit_using_subcommand
    set -l cmd (__fish_crmkit_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c crmkit -n "__fish_crmkit_needs_command" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_needs_command" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_needs_command" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_needs_command" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_needs_command" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_needs_command" -s V -l version -d 'Print version'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "login" -d 'Sign in by emailed code and store the token'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "logout" -d 'Revoke this session\'s token on the server and forget it here'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "whoami" -d 'Show who you are, your workspace, role, plan and usage'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "auth" -d 'Token helpers'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "tokens" -d 'Your sessions'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "workspaces" -d 'Workspaces, members, invites and roles'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "activities" -d 'Recent activities'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "reminders" -d 'Contacts and deals whose follow-up is due'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "audit" -d 'The workspace audit log, newest first'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "api" -d 'Raw API call with the stored token, output as received'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "completions" -d 'Print shell completions (bash, zsh, fish, powershell, elvish)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "man" -d 'Print the man page (roff; `crmkit man | man -l -`)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "serve" -d 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "migrate" -d 'Apply pending database migrations (serve also does this at start)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "migrate-data" -d 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "admin" -d 'Operator commands that act on the database directly'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "contacts" -d 'Contacts (people)'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "companies" -d 'Companies'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "deals" -d 'Deals'
complete -c crmkit -n "__fish_crmkit_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l email -d 'Your email' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l code -d 'The emailed code (asked for on a terminal otherwise)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l token-name -d 'Label of this session in `crmkit tokens list`' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l workspace -d 'Work in this workspace (name, id or handle) rather than the one sign-in picks (your personal one, as a rule)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l request-only -d 'Only email a code now; sign in later with --code'
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l with-token -d 'Read a token from stdin instead'
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand login" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand logout" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand logout" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand logout" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand logout" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand logout" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand whoami" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand whoami" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand whoami" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand whoami" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand whoami" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -f -a "token" -d 'Print the stored token (the only command that shows it)'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and not __fish_seen_subcommand_from token help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from token" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from token" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from token" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from token" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from token" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "token" -d 'Print the stored token (the only command that shows it)'
complete -c crmkit -n "__fish_crmkit_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -f -a "list" -d 'Your active tokens'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -f -a "revoke" -d 'Revoke one'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and not __fish_seen_subcommand_from list revoke help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from list" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from list" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from list" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from list" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from revoke" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from help" -f -a "list" -d 'Your active tokens'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from help" -f -a "revoke" -d 'Revoke one'
complete -c crmkit -n "__fish_crmkit_using_subcommand tokens; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "list" -d 'Workspaces you belong to'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "create" -d 'Create one (you become admin)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "use" -d 'Switch: mint a token for that workspace and make it current'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "show" -d 'One workspace: your role, its plan, and its usage against the plan\'s caps'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "members" -d 'Members and pending invites'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "invite" -d 'Invite someone by email (inviting as admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "role" -d 'Change a member\'s role (promoting to admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "remove" -d 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "decline" -d 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "rename" -d 'Rename a workspace (admins)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "leave" -d 'Leave a workspace you are a member of (an admin re-invites you to come back)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "delete" -d 'Delete a workspace and all its data (needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and not __fish_seen_subcommand_from list create use show members invite role remove decline rename leave delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from list" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from list" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from list" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from list" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from create" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from create" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from create" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from create" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from use" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from use" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from use" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from use" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from use" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from show" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from show" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from show" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from show" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from members" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from members" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from members" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from members" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from members" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l role -d 'admin or member [default: member; a resent invite keeps its role]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l code -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from invite" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -l code -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from role" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -l yes -d 'Remove a member without asking (needed when not on a terminal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from decline" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from decline" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from decline" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from decline" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from decline" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from rename" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from rename" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from rename" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from rename" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from rename" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -l yes
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from leave" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l code -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l yes
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "list" -d 'Workspaces you belong to'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create one (you become admin)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "use" -d 'Switch: mint a token for that workspace and make it current'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "show" -d 'One workspace: your role, its plan, and its usage against the plan\'s caps'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "members" -d 'Members and pending invites'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "invite" -d 'Invite someone by email (inviting as admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "role" -d 'Change a member\'s role (promoting to admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "decline" -d 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "rename" -d 'Rename a workspace (admins)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "leave" -d 'Leave a workspace you are a member of (an admin re-invites you to come back)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete a workspace and all its data (needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand workspaces; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l contact -d 'Only this contact\'s' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l deal -d 'Only this deal\'s' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l kind -d 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l since -d 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l until -d 'Only activities before TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l author -d 'Only what this user logged (u_… or user/u_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l oldest-first -d 'Oldest first (newest first by default)'
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand activities" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l days -d 'Also what is due within N days' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand reminders" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l target -d 'Only this record\'s history: a handle or id (deal/d_…, c_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l action -d 'Only these actions (deal.update) or kinds (deal); repeat or comma-separate' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l user -d 'Only what this user did (u_… or user/u_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l since -d 'Only entries at or after TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l until -d 'Only entries before TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand audit" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l data -d 'JSON body, @file or - for stdin' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l header -d 'Extra header, K:V (repeatable)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand api" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand completions" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand completions" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand completions" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand completions" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand completions" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand man" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand man" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand man" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand man" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand man" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l config -d 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l bind -d 'Listen address [default: 127.0.0.1:8080]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l database-url -d '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l base-url -d 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l smtp-url -d '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l smtp-ca-file -d 'PEM file of CA certificates to trust for the SMTP server\'s certificate, besides the public ones (smtp+starttls:// and smtps:// only)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l mail-from -d 'Sender address [default: crmkit <no-reply@localhost>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l token-idle-ttl -d 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l db-max-connections -d 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l db-startup-wait -d 'How long start-up keeps retrying an unreachable database [default: 30s]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l body-limit -d 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l log -d 'Log filter, e.g. info or crmkit=debug [default: info]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l trust-proxy -d 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l limit-contacts -d 'The default plan\'s contacts cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l limit-companies -d 'The default plan\'s companies cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l limit-deals -d 'The default plan\'s deals cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l limit-members -d 'The default plan\'s members cap, pending invites included [default: 10]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l limit-workspaces -d 'The default plan\'s workspaces-per-user cap [default: 5]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l config -d 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l bind -d 'Listen address [default: 127.0.0.1:8080]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l database-url -d '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l base-url -d 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l smtp-url -d '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l smtp-ca-file -d 'PEM file of CA certificates to trust for the SMTP server\'s certificate, besides the public ones (smtp+starttls:// and smtps:// only)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l mail-from -d 'Sender address [default: crmkit <no-reply@localhost>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l token-idle-ttl -d 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l db-max-connections -d 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l db-startup-wait -d 'How long start-up keeps retrying an unreachable database [default: 30s]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l body-limit -d 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l log -d 'Log filter, e.g. info or crmkit=debug [default: info]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l trust-proxy -d 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l limit-contacts -d 'The default plan\'s contacts cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l limit-companies -d 'The default plan\'s companies cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l limit-deals -d 'The default plan\'s deals cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l limit-members -d 'The default plan\'s members cap, pending invites included [default: 10]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l limit-workspaces -d 'The default plan\'s workspaces-per-user cap [default: 5]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l dry-run -d 'Only print the migrations that would run'
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l from -d 'Source database URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l to -d 'Target database URL (must be empty)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand migrate-data" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -f -a "set-plan" -d 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and not __fish_seen_subcommand_from set-plan help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l config -d 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l bind -d 'Listen address [default: 127.0.0.1:8080]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l database-url -d '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l base-url -d 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l smtp-url -d '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l smtp-ca-file -d 'PEM file of CA certificates to trust for the SMTP server\'s certificate, besides the public ones (smtp+starttls:// and smtps:// only)' -r -F
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l mail-from -d 'Sender address [default: crmkit <no-reply@localhost>]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l token-idle-ttl -d 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l db-max-connections -d 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l db-startup-wait -d 'How long start-up keeps retrying an unreachable database [default: 30s]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l body-limit -d 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l log -d 'Log filter, e.g. info or crmkit=debug [default: info]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l trust-proxy -d 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l limit-contacts -d 'The default plan\'s contacts cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l limit-companies -d 'The default plan\'s companies cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l limit-deals -d 'The default plan\'s deals cap [default: 1000]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l limit-members -d 'The default plan\'s members cap, pending invites included [default: 10]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l limit-workspaces -d 'The default plan\'s workspaces-per-user cap [default: 5]' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from set-plan" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "set-plan" -d 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
complete -c crmkit -n "__fish_crmkit_using_subcommand admin; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "create" -d 'Create (an email already there updates that contact instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and not __fish_seen_subcommand_from summary get import delete activities log create update list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l by -d 'Group by these fields, comma-separated (deals: status,stage by default)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l where -d 'Any filter of the query language (repeatable)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from summary" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from get" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from get" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from get" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from get" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from import" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from import" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from import" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from import" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -l yes
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l kind -d 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l since -d 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l until -d 'Only activities before TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l author -d 'Only what this user logged (u_… or user/u_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l oldest-first -d 'Oldest first (newest first by default)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from activities" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l kind -d 'call, email, meeting, note or task' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l body -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l deal -d 'Deal id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l at -d 'When it happened, RFC3339 (default now)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from log" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from update" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l tag -d 'Has this tag (repeatable: all of them)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l sort -d 'field or -field' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l where -d 'Any filter of the query language, e.g. \'stage=in:lead,customer\' (repeatable; the manual: crmkit api GET /help)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create (an email already there updates that contact instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand contacts; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "create" -d 'Create (a domain already there updates that company instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and not __fish_seen_subcommand_from summary get import delete create update list activities log help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l by -d 'Group by these fields, comma-separated (deals: status,stage by default)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l where -d 'Any filter of the query language (repeatable)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from summary" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from get" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from get" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from get" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from get" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from import" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from import" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from import" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from import" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -l yes
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from update" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l tag -d 'Has this tag (repeatable: all of them)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l sort -d 'field or -field' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l where -d 'Any filter of the query language, e.g. \'domain=acme.com\' (repeatable; the manual: crmkit api GET /help)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l kind -d 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l since -d 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l until -d 'Only activities before TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l author -d 'Only what this user logged (u_… or user/u_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l oldest-first -d 'Oldest first (newest first by default)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from activities" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l kind -d 'call, email, meeting, note or task' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l body -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l deal -d 'Deal id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l at -d 'When it happened, RFC3339 (default now)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from log" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create (a domain already there updates that company instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand companies; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "create" -d 'Create'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and not __fish_seen_subcommand_from summary get import delete activities create update list log help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l by -d 'Group by these fields, comma-separated (deals: status,stage by default)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l where -d 'Any filter of the query language (repeatable)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from summary" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from get" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from get" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from get" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from get" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from import" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from import" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from import" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from import" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -l yes
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l kind -d 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l since -d 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l until -d 'Only activities before TIME (RFC 3339)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l author -d 'Only what this user logged (u_… or user/u_…)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l oldest-first -d 'Oldest first (newest first by default)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from activities" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l title -d 'Job title (contacts) or deal title' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l company -d 'Company id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l contact -d 'Contact id or handle (deals)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l amount-cents -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l currency -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l tag -d 'Tag (repeatable; replaces the tags)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l custom -d 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l follow-up -d 'Follow-up time, RFC3339' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l note -d 'Follow-up note' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l data -d 'The whole body as JSON, @file.json or - for stdin (flags override it)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l clear -d 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l name -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l phone -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l domain -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l industry -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from update" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l stage -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l tag -d 'Has this tag (repeatable: all of them)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l status -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l search -d 'Substring search over the key fields' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l sort -d 'field or -field' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l limit -d 'At most N per page (1..200)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l cursor -d 'Continue from a `# next:` cursor' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l email -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l where -d 'Any filter of the query language, e.g. \'amount_cents=gte:100000\' (repeatable; the manual: crmkit api GET /help)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l all -d 'Follow cursors to the end'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l kind -d 'call, email, meeting, note or task' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l body -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l deal -d 'Deal id or handle' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l at -d 'When it happened, RFC3339 (default now)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l server -d 'Server URL' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l profile -d 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)' -r
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l format -d 'Force the output format' -r -f -a "text\t''
table\t''
json\t''"
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -l json -d 'Print JSON'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from log" -s h -l help -d 'Print help'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "create" -d 'Create'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand deals; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "login" -d 'Sign in by emailed code and store the token'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "logout" -d 'Revoke this session\'s token on the server and forget it here'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "whoami" -d 'Show who you are, your workspace, role, plan and usage'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "auth" -d 'Token helpers'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "tokens" -d 'Your sessions'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "workspaces" -d 'Workspaces, members, invites and roles'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "activities" -d 'Recent activities'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "reminders" -d 'Contacts and deals whose follow-up is due'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "audit" -d 'The workspace audit log, newest first'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "api" -d 'Raw API call with the stored token, output as received'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "completions" -d 'Print shell completions (bash, zsh, fish, powershell, elvish)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "man" -d 'Print the man page (roff; `crmkit man | man -l -`)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "serve" -d 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "migrate" -d 'Apply pending database migrations (serve also does this at start)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "migrate-data" -d 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "admin" -d 'Operator commands that act on the database directly'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "contacts" -d 'Contacts (people)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "companies" -d 'Companies'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "deals" -d 'Deals'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and not __fish_seen_subcommand_from login logout whoami auth tokens workspaces activities reminders audit api completions man serve migrate migrate-data admin contacts companies deals help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from auth" -f -a "token" -d 'Print the stored token (the only command that shows it)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from tokens" -f -a "list" -d 'Your active tokens'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from tokens" -f -a "revoke" -d 'Revoke one'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "list" -d 'Workspaces you belong to'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "create" -d 'Create one (you become admin)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "use" -d 'Switch: mint a token for that workspace and make it current'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "show" -d 'One workspace: your role, its plan, and its usage against the plan\'s caps'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "members" -d 'Members and pending invites'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "invite" -d 'Invite someone by email (inviting as admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "role" -d 'Change a member\'s role (promoting to admin needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "remove" -d 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "decline" -d 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "rename" -d 'Rename a workspace (admins)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "leave" -d 'Leave a workspace you are a member of (an admin re-invites you to come back)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from workspaces" -f -a "delete" -d 'Delete a workspace and all its data (needs the emailed code)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from admin" -f -a "set-plan" -d 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "create" -d 'Create (an email already there updates that contact instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from contacts" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "create" -d 'Create (a domain already there updates that company instead)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from companies" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "summary" -d 'Counts per group (deals: and amounts per currency), over the filtered records'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "get" -d 'One record'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "import" -d 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "delete" -d 'Delete (asks first; --yes in scripts)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "activities" -d 'Activities: a contact\'s log, or those naming a deal (companies have none)'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "create" -d 'Create'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "update" -d 'Change some fields'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "list" -d 'List and filter'
complete -c crmkit -n "__fish_crmkit_using_subcommand help; and __fish_seen_subcommand_from deals" -f -a "log" -d 'Log an activity (on contacts only; --deal adds a deal)'
