
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'crmkit' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'crmkit'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'crmkit' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('login', 'login', [CompletionResultType]::ParameterValue, 'Sign in by emailed code and store the token')
            [CompletionResult]::new('logout', 'logout', [CompletionResultType]::ParameterValue, 'Revoke this session''s token on the server and forget it here')
            [CompletionResult]::new('whoami', 'whoami', [CompletionResultType]::ParameterValue, 'Show who you are, your workspace, role, plan and usage')
            [CompletionResult]::new('auth', 'auth', [CompletionResultType]::ParameterValue, 'Token helpers')
            [CompletionResult]::new('tokens', 'tokens', [CompletionResultType]::ParameterValue, 'Your sessions')
            [CompletionResult]::new('workspaces', 'workspaces', [CompletionResultType]::ParameterValue, 'Workspaces, members, invites and roles')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Recent activities')
            [CompletionResult]::new('reminders', 'reminders', [CompletionResultType]::ParameterValue, 'Contacts and deals whose follow-up is due')
            [CompletionResult]::new('audit', 'audit', [CompletionResultType]::ParameterValue, 'The workspace audit log, newest first')
            [CompletionResult]::new('api', 'api', [CompletionResultType]::ParameterValue, 'Raw API call with the stored token, output as received')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print shell completions (bash, zsh, fish, powershell, elvish)')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print the man page (roff; `crmkit man | man -l -`)')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Apply pending database migrations (serve also does this at start)')
            [CompletionResult]::new('migrate-data', 'migrate-data', [CompletionResultType]::ParameterValue, 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)')
            [CompletionResult]::new('admin', 'admin', [CompletionResultType]::ParameterValue, 'Operator commands that act on the database directly')
            [CompletionResult]::new('contacts', 'contacts', [CompletionResultType]::ParameterValue, 'Contacts (people)')
            [CompletionResult]::new('companies', 'companies', [CompletionResultType]::ParameterValue, 'Companies')
            [CompletionResult]::new('deals', 'deals', [CompletionResultType]::ParameterValue, 'Deals')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;login' {
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'Your email')
            [CompletionResult]::new('--code', '--code', [CompletionResultType]::ParameterName, 'The emailed code (asked for on a terminal otherwise)')
            [CompletionResult]::new('--token-name', '--token-name', [CompletionResultType]::ParameterName, 'Label of this session in `crmkit tokens list`')
            [CompletionResult]::new('--workspace', '--workspace', [CompletionResultType]::ParameterName, 'Work in this workspace (name, id or handle) rather than the one sign-in picks (your personal one, as a rule)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--request-only', '--request-only', [CompletionResultType]::ParameterName, 'Only email a code now; sign in later with --code')
            [CompletionResult]::new('--with-token', '--with-token', [CompletionResultType]::ParameterName, 'Read a token from stdin instead')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;logout' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;whoami' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;auth' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('token', 'token', [CompletionResultType]::ParameterValue, 'Print the stored token (the only command that shows it)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;auth;token' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;auth;help' {
            [CompletionResult]::new('token', 'token', [CompletionResultType]::ParameterValue, 'Print the stored token (the only command that shows it)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;auth;help;token' {
            break
        }
        'crmkit;auth;help;help' {
            break
        }
        'crmkit;tokens' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Your active tokens')
            [CompletionResult]::new('revoke', 'revoke', [CompletionResultType]::ParameterValue, 'Revoke one')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;tokens;list' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;tokens;revoke' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;tokens;help' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Your active tokens')
            [CompletionResult]::new('revoke', 'revoke', [CompletionResultType]::ParameterValue, 'Revoke one')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;tokens;help;list' {
            break
        }
        'crmkit;tokens;help;revoke' {
            break
        }
        'crmkit;tokens;help;help' {
            break
        }
        'crmkit;workspaces' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Workspaces you belong to')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create one (you become admin)')
            [CompletionResult]::new('use', 'use', [CompletionResultType]::ParameterValue, 'Switch: mint a token for that workspace and make it current')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One workspace: your role, its plan, and its usage against the plan''s caps')
            [CompletionResult]::new('members', 'members', [CompletionResultType]::ParameterValue, 'Members and pending invites')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Invite someone by email (inviting as admin needs the emailed code)')
            [CompletionResult]::new('role', 'role', [CompletionResultType]::ParameterValue, 'Change a member''s role (promoting to admin needs the emailed code)')
            [CompletionResult]::new('remove', 'remove', [CompletionResultType]::ParameterValue, 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite')
            [CompletionResult]::new('decline', 'decline', [CompletionResultType]::ParameterValue, 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)')
            [CompletionResult]::new('rename', 'rename', [CompletionResultType]::ParameterValue, 'Rename a workspace (admins)')
            [CompletionResult]::new('leave', 'leave', [CompletionResultType]::ParameterValue, 'Leave a workspace you are a member of (an admin re-invites you to come back)')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a workspace and all its data (needs the emailed code)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;workspaces;list' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;create' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;use' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'crmkit;workspaces;show' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;members' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;invite' {
            [CompletionResult]::new('--role', '--role', [CompletionResultType]::ParameterName, 'admin or member [default: member; a resent invite keeps its role]')
            [CompletionResult]::new('--code', '--code', [CompletionResultType]::ParameterName, 'code')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;role' {
            [CompletionResult]::new('--code', '--code', [CompletionResultType]::ParameterName, 'code')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;remove' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'Remove a member without asking (needed when not on a terminal)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;decline' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;rename' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;leave' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'yes')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;delete' {
            [CompletionResult]::new('--code', '--code', [CompletionResultType]::ParameterName, 'code')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'yes')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;workspaces;help' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Workspaces you belong to')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create one (you become admin)')
            [CompletionResult]::new('use', 'use', [CompletionResultType]::ParameterValue, 'Switch: mint a token for that workspace and make it current')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One workspace: your role, its plan, and its usage against the plan''s caps')
            [CompletionResult]::new('members', 'members', [CompletionResultType]::ParameterValue, 'Members and pending invites')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Invite someone by email (inviting as admin needs the emailed code)')
            [CompletionResult]::new('role', 'role', [CompletionResultType]::ParameterValue, 'Change a member''s role (promoting to admin needs the emailed code)')
            [CompletionResult]::new('remove', 'remove', [CompletionResultType]::ParameterValue, 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite')
            [CompletionResult]::new('decline', 'decline', [CompletionResultType]::ParameterValue, 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)')
            [CompletionResult]::new('rename', 'rename', [CompletionResultType]::ParameterValue, 'Rename a workspace (admins)')
            [CompletionResult]::new('leave', 'leave', [CompletionResultType]::ParameterValue, 'Leave a workspace you are a member of (an admin re-invites you to come back)')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a workspace and all its data (needs the emailed code)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;workspaces;help;list' {
            break
        }
        'crmkit;workspaces;help;create' {
            break
        }
        'crmkit;workspaces;help;use' {
            break
        }
        'crmkit;workspaces;help;show' {
            break
        }
        'crmkit;workspaces;help;members' {
            break
        }
        'crmkit;workspaces;help;invite' {
            break
        }
        'crmkit;workspaces;help;role' {
            break
        }
        'crmkit;workspaces;help;remove' {
            break
        }
        'crmkit;workspaces;help;decline' {
            break
        }
        'crmkit;workspaces;help;rename' {
            break
        }
        'crmkit;workspaces;help;leave' {
            break
        }
        'crmkit;workspaces;help;delete' {
            break
        }
        'crmkit;workspaces;help;help' {
            break
        }
        'crmkit;activities' {
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Only this contact''s')
            [CompletionResult]::new('--deal', '--deal', [CompletionResultType]::ParameterName, 'Only this deal''s')
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only activities before TIME (RFC 3339)')
            [CompletionResult]::new('--author', '--author', [CompletionResultType]::ParameterName, 'Only what this user logged (u_… or user/u_…)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--oldest-first', '--oldest-first', [CompletionResultType]::ParameterName, 'Oldest first (newest first by default)')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;reminders' {
            [CompletionResult]::new('--days', '--days', [CompletionResultType]::ParameterName, 'Also what is due within N days')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;audit' {
            [CompletionResult]::new('--target', '--target', [CompletionResultType]::ParameterName, 'Only this record''s history: a handle or id (deal/d_…, c_…)')
            [CompletionResult]::new('--action', '--action', [CompletionResultType]::ParameterName, 'Only these actions (deal.update) or kinds (deal); repeat or comma-separate')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Only what this user did (u_… or user/u_…)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only entries at or after TIME (RFC 3339)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only entries before TIME (RFC 3339)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;api' {
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'JSON body, @file or - for stdin')
            [CompletionResult]::new('--header', '--header', [CompletionResultType]::ParameterName, 'Extra header, K:V (repeatable)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;completions' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;man' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;serve' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'Listen address [default: 127.0.0.1:8080]')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]')
            [CompletionResult]::new('--base-url', '--base-url', [CompletionResultType]::ParameterName, 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]')
            [CompletionResult]::new('--smtp-url', '--smtp-url', [CompletionResultType]::ParameterName, '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode')
            [CompletionResult]::new('--smtp-ca-file', '--smtp-ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)')
            [CompletionResult]::new('--mail-from', '--mail-from', [CompletionResultType]::ParameterName, 'Sender address [default: crmkit <no-reply@localhost>]')
            [CompletionResult]::new('--token-idle-ttl', '--token-idle-ttl', [CompletionResultType]::ParameterName, 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]')
            [CompletionResult]::new('--db-max-connections', '--db-max-connections', [CompletionResultType]::ParameterName, 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]')
            [CompletionResult]::new('--db-startup-wait', '--db-startup-wait', [CompletionResultType]::ParameterName, 'How long start-up keeps retrying an unreachable database [default: 30s]')
            [CompletionResult]::new('--body-limit', '--body-limit', [CompletionResultType]::ParameterName, 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]')
            [CompletionResult]::new('--log', '--log', [CompletionResultType]::ParameterName, 'Log filter, e.g. info or crmkit=debug [default: info]')
            [CompletionResult]::new('--trust-proxy', '--trust-proxy', [CompletionResultType]::ParameterName, 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)')
            [CompletionResult]::new('--limit-contacts', '--limit-contacts', [CompletionResultType]::ParameterName, 'The default plan''s contacts cap [default: 1000]')
            [CompletionResult]::new('--limit-companies', '--limit-companies', [CompletionResultType]::ParameterName, 'The default plan''s companies cap [default: 1000]')
            [CompletionResult]::new('--limit-deals', '--limit-deals', [CompletionResultType]::ParameterName, 'The default plan''s deals cap [default: 1000]')
            [CompletionResult]::new('--limit-members', '--limit-members', [CompletionResultType]::ParameterName, 'The default plan''s members cap, pending invites included [default: 10]')
            [CompletionResult]::new('--limit-workspaces', '--limit-workspaces', [CompletionResultType]::ParameterName, 'The default plan''s workspaces-per-user cap [default: 5]')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'crmkit;migrate' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'Listen address [default: 127.0.0.1:8080]')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]')
            [CompletionResult]::new('--base-url', '--base-url', [CompletionResultType]::ParameterName, 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]')
            [CompletionResult]::new('--smtp-url', '--smtp-url', [CompletionResultType]::ParameterName, '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode')
            [CompletionResult]::new('--smtp-ca-file', '--smtp-ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)')
            [CompletionResult]::new('--mail-from', '--mail-from', [CompletionResultType]::ParameterName, 'Sender address [default: crmkit <no-reply@localhost>]')
            [CompletionResult]::new('--token-idle-ttl', '--token-idle-ttl', [CompletionResultType]::ParameterName, 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]')
            [CompletionResult]::new('--db-max-connections', '--db-max-connections', [CompletionResultType]::ParameterName, 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]')
            [CompletionResult]::new('--db-startup-wait', '--db-startup-wait', [CompletionResultType]::ParameterName, 'How long start-up keeps retrying an unreachable database [default: 30s]')
            [CompletionResult]::new('--body-limit', '--body-limit', [CompletionResultType]::ParameterName, 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]')
            [CompletionResult]::new('--log', '--log', [CompletionResultType]::ParameterName, 'Log filter, e.g. info or crmkit=debug [default: info]')
            [CompletionResult]::new('--trust-proxy', '--trust-proxy', [CompletionResultType]::ParameterName, 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)')
            [CompletionResult]::new('--limit-contacts', '--limit-contacts', [CompletionResultType]::ParameterName, 'The default plan''s contacts cap [default: 1000]')
            [CompletionResult]::new('--limit-companies', '--limit-companies', [CompletionResultType]::ParameterName, 'The default plan''s companies cap [default: 1000]')
            [CompletionResult]::new('--limit-deals', '--limit-deals', [CompletionResultType]::ParameterName, 'The default plan''s deals cap [default: 1000]')
            [CompletionResult]::new('--limit-members', '--limit-members', [CompletionResultType]::ParameterName, 'The default plan''s members cap, pending invites included [default: 10]')
            [CompletionResult]::new('--limit-workspaces', '--limit-workspaces', [CompletionResultType]::ParameterName, 'The default plan''s workspaces-per-user cap [default: 5]')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Only print the migrations that would run')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'crmkit;migrate-data' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Source database URL')
            [CompletionResult]::new('--to', '--to', [CompletionResultType]::ParameterName, 'Target database URL (must be empty)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;admin' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('set-plan', 'set-plan', [CompletionResultType]::ParameterValue, 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;admin;set-plan' {
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'Listen address [default: 127.0.0.1:8080]')
            [CompletionResult]::new('--database-url', '--database-url', [CompletionResultType]::ParameterName, '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]')
            [CompletionResult]::new('--base-url', '--base-url', [CompletionResultType]::ParameterName, 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]')
            [CompletionResult]::new('--smtp-url', '--smtp-url', [CompletionResultType]::ParameterName, '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode')
            [CompletionResult]::new('--smtp-ca-file', '--smtp-ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)')
            [CompletionResult]::new('--mail-from', '--mail-from', [CompletionResultType]::ParameterName, 'Sender address [default: crmkit <no-reply@localhost>]')
            [CompletionResult]::new('--token-idle-ttl', '--token-idle-ttl', [CompletionResultType]::ParameterName, 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]')
            [CompletionResult]::new('--db-max-connections', '--db-max-connections', [CompletionResultType]::ParameterName, 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]')
            [CompletionResult]::new('--db-startup-wait', '--db-startup-wait', [CompletionResultType]::ParameterName, 'How long start-up keeps retrying an unreachable database [default: 30s]')
            [CompletionResult]::new('--body-limit', '--body-limit', [CompletionResultType]::ParameterName, 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]')
            [CompletionResult]::new('--log', '--log', [CompletionResultType]::ParameterName, 'Log filter, e.g. info or crmkit=debug [default: info]')
            [CompletionResult]::new('--trust-proxy', '--trust-proxy', [CompletionResultType]::ParameterName, 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)')
            [CompletionResult]::new('--limit-contacts', '--limit-contacts', [CompletionResultType]::ParameterName, 'The default plan''s contacts cap [default: 1000]')
            [CompletionResult]::new('--limit-companies', '--limit-companies', [CompletionResultType]::ParameterName, 'The default plan''s companies cap [default: 1000]')
            [CompletionResult]::new('--limit-deals', '--limit-deals', [CompletionResultType]::ParameterName, 'The default plan''s deals cap [default: 1000]')
            [CompletionResult]::new('--limit-members', '--limit-members', [CompletionResultType]::ParameterName, 'The default plan''s members cap, pending invites included [default: 10]')
            [CompletionResult]::new('--limit-workspaces', '--limit-workspaces', [CompletionResultType]::ParameterName, 'The default plan''s workspaces-per-user cap [default: 5]')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            break
        }
        'crmkit;admin;help' {
            [CompletionResult]::new('set-plan', 'set-plan', [CompletionResultType]::ParameterValue, 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;admin;help;set-plan' {
            break
        }
        'crmkit;admin;help;help' {
            break
        }
        'crmkit;contacts' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (an email already there updates that contact instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;contacts;summary' {
            [CompletionResult]::new('--by', '--by', [CompletionResultType]::ParameterName, 'Group by these fields, comma-separated (deals: status,stage by default)')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language (repeatable)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;get' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;import' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;delete' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'yes')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;activities' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only activities before TIME (RFC 3339)')
            [CompletionResult]::new('--author', '--author', [CompletionResultType]::ParameterName, 'Only what this user logged (u_… or user/u_…)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--oldest-first', '--oldest-first', [CompletionResultType]::ParameterName, 'Oldest first (newest first by default)')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;log' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'call, email, meeting, note or task')
            [CompletionResult]::new('--body', '--body', [CompletionResultType]::ParameterName, 'body')
            [CompletionResult]::new('--deal', '--deal', [CompletionResultType]::ParameterName, 'Deal id or handle')
            [CompletionResult]::new('--at', '--at', [CompletionResultType]::ParameterName, 'When it happened, RFC3339 (default now)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;create' {
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;update' {
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;list' {
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Has this tag (repeatable: all of them)')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--sort', '--sort', [CompletionResultType]::ParameterName, 'field or -field')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language, e.g. ''stage=in:lead,customer'' (repeatable; the manual: crmkit api GET /help)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;contacts;help' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (an email already there updates that contact instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;contacts;help;summary' {
            break
        }
        'crmkit;contacts;help;get' {
            break
        }
        'crmkit;contacts;help;import' {
            break
        }
        'crmkit;contacts;help;delete' {
            break
        }
        'crmkit;contacts;help;activities' {
            break
        }
        'crmkit;contacts;help;log' {
            break
        }
        'crmkit;contacts;help;create' {
            break
        }
        'crmkit;contacts;help;update' {
            break
        }
        'crmkit;contacts;help;list' {
            break
        }
        'crmkit;contacts;help;help' {
            break
        }
        'crmkit;companies' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (a domain already there updates that company instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;companies;summary' {
            [CompletionResult]::new('--by', '--by', [CompletionResultType]::ParameterName, 'Group by these fields, comma-separated (deals: status,stage by default)')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language (repeatable)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;get' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;import' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;delete' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'yes')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;create' {
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;update' {
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;list' {
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Has this tag (repeatable: all of them)')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--sort', '--sort', [CompletionResultType]::ParameterName, 'field or -field')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language, e.g. ''domain=acme.com'' (repeatable; the manual: crmkit api GET /help)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;activities' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only activities before TIME (RFC 3339)')
            [CompletionResult]::new('--author', '--author', [CompletionResultType]::ParameterName, 'Only what this user logged (u_… or user/u_…)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--oldest-first', '--oldest-first', [CompletionResultType]::ParameterName, 'Oldest first (newest first by default)')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;log' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'call, email, meeting, note or task')
            [CompletionResult]::new('--body', '--body', [CompletionResultType]::ParameterName, 'body')
            [CompletionResult]::new('--deal', '--deal', [CompletionResultType]::ParameterName, 'Deal id or handle')
            [CompletionResult]::new('--at', '--at', [CompletionResultType]::ParameterName, 'When it happened, RFC3339 (default now)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;companies;help' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (a domain already there updates that company instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;companies;help;summary' {
            break
        }
        'crmkit;companies;help;get' {
            break
        }
        'crmkit;companies;help;import' {
            break
        }
        'crmkit;companies;help;delete' {
            break
        }
        'crmkit;companies;help;create' {
            break
        }
        'crmkit;companies;help;update' {
            break
        }
        'crmkit;companies;help;list' {
            break
        }
        'crmkit;companies;help;activities' {
            break
        }
        'crmkit;companies;help;log' {
            break
        }
        'crmkit;companies;help;help' {
            break
        }
        'crmkit;deals' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;deals;summary' {
            [CompletionResult]::new('--by', '--by', [CompletionResultType]::ParameterName, 'Group by these fields, comma-separated (deals: status,stage by default)')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language (repeatable)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;get' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;import' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;delete' {
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'yes')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;activities' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Only activities before TIME (RFC 3339)')
            [CompletionResult]::new('--author', '--author', [CompletionResultType]::ParameterName, 'Only what this user logged (u_… or user/u_…)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--oldest-first', '--oldest-first', [CompletionResultType]::ParameterName, 'Oldest first (newest first by default)')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;create' {
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;update' {
            [CompletionResult]::new('--title', '--title', [CompletionResultType]::ParameterName, 'Job title (contacts) or deal title')
            [CompletionResult]::new('--company', '--company', [CompletionResultType]::ParameterName, 'Company id or handle')
            [CompletionResult]::new('--contact', '--contact', [CompletionResultType]::ParameterName, 'Contact id or handle (deals)')
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--amount-cents', '--amount-cents', [CompletionResultType]::ParameterName, 'amount-cents')
            [CompletionResult]::new('--currency', '--currency', [CompletionResultType]::ParameterName, 'currency')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Tag (repeatable; replaces the tags)')
            [CompletionResult]::new('--custom', '--custom', [CompletionResultType]::ParameterName, 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text')
            [CompletionResult]::new('--follow-up', '--follow-up', [CompletionResultType]::ParameterName, 'Follow-up time, RFC3339')
            [CompletionResult]::new('--note', '--note', [CompletionResultType]::ParameterName, 'Follow-up note')
            [CompletionResult]::new('--data', '--data', [CompletionResultType]::ParameterName, 'The whole body as JSON, @file.json or - for stdin (flags override it)')
            [CompletionResult]::new('--clear', '--clear', [CompletionResultType]::ParameterName, 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags')
            [CompletionResult]::new('--name', '--name', [CompletionResultType]::ParameterName, 'name')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--phone', '--phone', [CompletionResultType]::ParameterName, 'phone')
            [CompletionResult]::new('--domain', '--domain', [CompletionResultType]::ParameterName, 'domain')
            [CompletionResult]::new('--industry', '--industry', [CompletionResultType]::ParameterName, 'industry')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;list' {
            [CompletionResult]::new('--stage', '--stage', [CompletionResultType]::ParameterName, 'stage')
            [CompletionResult]::new('--tag', '--tag', [CompletionResultType]::ParameterName, 'Has this tag (repeatable: all of them)')
            [CompletionResult]::new('--status', '--status', [CompletionResultType]::ParameterName, 'status')
            [CompletionResult]::new('--search', '--search', [CompletionResultType]::ParameterName, 'Substring search over the key fields')
            [CompletionResult]::new('--sort', '--sort', [CompletionResultType]::ParameterName, 'field or -field')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most N per page (1..200)')
            [CompletionResult]::new('--cursor', '--cursor', [CompletionResultType]::ParameterName, 'Continue from a `# next:` cursor')
            [CompletionResult]::new('--email', '--email', [CompletionResultType]::ParameterName, 'email')
            [CompletionResult]::new('--where', '--where', [CompletionResultType]::ParameterName, 'Any filter of the query language, e.g. ''amount_cents=gte:100000'' (repeatable; the manual: crmkit api GET /help)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Follow cursors to the end')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;log' {
            [CompletionResult]::new('--kind', '--kind', [CompletionResultType]::ParameterName, 'call, email, meeting, note or task')
            [CompletionResult]::new('--body', '--body', [CompletionResultType]::ParameterName, 'body')
            [CompletionResult]::new('--deal', '--deal', [CompletionResultType]::ParameterName, 'Deal id or handle')
            [CompletionResult]::new('--at', '--at', [CompletionResultType]::ParameterName, 'When it happened, RFC3339 (default now)')
            [CompletionResult]::new('--server', '--server', [CompletionResultType]::ParameterName, 'Server URL')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Force the output format')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            break
        }
        'crmkit;deals;help' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;deals;help;summary' {
            break
        }
        'crmkit;deals;help;get' {
            break
        }
        'crmkit;deals;help;import' {
            break
        }
        'crmkit;deals;help;delete' {
            break
        }
        'crmkit;deals;help;activities' {
            break
        }
        'crmkit;deals;help;create' {
            break
        }
        'crmkit;deals;help;update' {
            break
        }
        'crmkit;deals;help;list' {
            break
        }
        'crmkit;deals;help;log' {
            break
        }
        'crmkit;deals;help;help' {
            break
        }
        'crmkit;help' {
            [CompletionResult]::new('login', 'login', [CompletionResultType]::ParameterValue, 'Sign in by emailed code and store the token')
            [CompletionResult]::new('logout', 'logout', [CompletionResultType]::ParameterValue, 'Revoke this session''s token on the server and forget it here')
            [CompletionResult]::new('whoami', 'whoami', [CompletionResultType]::ParameterValue, 'Show who you are, your workspace, role, plan and usage')
            [CompletionResult]::new('auth', 'auth', [CompletionResultType]::ParameterValue, 'Token helpers')
            [CompletionResult]::new('tokens', 'tokens', [CompletionResultType]::ParameterValue, 'Your sessions')
            [CompletionResult]::new('workspaces', 'workspaces', [CompletionResultType]::ParameterValue, 'Workspaces, members, invites and roles')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Recent activities')
            [CompletionResult]::new('reminders', 'reminders', [CompletionResultType]::ParameterValue, 'Contacts and deals whose follow-up is due')
            [CompletionResult]::new('audit', 'audit', [CompletionResultType]::ParameterValue, 'The workspace audit log, newest first')
            [CompletionResult]::new('api', 'api', [CompletionResultType]::ParameterValue, 'Raw API call with the stored token, output as received')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print shell completions (bash, zsh, fish, powershell, elvish)')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print the man page (roff; `crmkit man | man -l -`)')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)')
            [CompletionResult]::new('migrate', 'migrate', [CompletionResultType]::ParameterValue, 'Apply pending database migrations (serve also does this at start)')
            [CompletionResult]::new('migrate-data', 'migrate-data', [CompletionResultType]::ParameterValue, 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)')
            [CompletionResult]::new('admin', 'admin', [CompletionResultType]::ParameterValue, 'Operator commands that act on the database directly')
            [CompletionResult]::new('contacts', 'contacts', [CompletionResultType]::ParameterValue, 'Contacts (people)')
            [CompletionResult]::new('companies', 'companies', [CompletionResultType]::ParameterValue, 'Companies')
            [CompletionResult]::new('deals', 'deals', [CompletionResultType]::ParameterValue, 'Deals')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'crmkit;help;login' {
            break
        }
        'crmkit;help;logout' {
            break
        }
        'crmkit;help;whoami' {
            break
        }
        'crmkit;help;auth' {
            [CompletionResult]::new('token', 'token', [CompletionResultType]::ParameterValue, 'Print the stored token (the only command that shows it)')
            break
        }
        'crmkit;help;auth;token' {
            break
        }
        'crmkit;help;tokens' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Your active tokens')
            [CompletionResult]::new('revoke', 'revoke', [CompletionResultType]::ParameterValue, 'Revoke one')
            break
        }
        'crmkit;help;tokens;list' {
            break
        }
        'crmkit;help;tokens;revoke' {
            break
        }
        'crmkit;help;workspaces' {
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'Workspaces you belong to')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create one (you become admin)')
            [CompletionResult]::new('use', 'use', [CompletionResultType]::ParameterValue, 'Switch: mint a token for that workspace and make it current')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'One workspace: your role, its plan, and its usage against the plan''s caps')
            [CompletionResult]::new('members', 'members', [CompletionResultType]::ParameterValue, 'Members and pending invites')
            [CompletionResult]::new('invite', 'invite', [CompletionResultType]::ParameterValue, 'Invite someone by email (inviting as admin needs the emailed code)')
            [CompletionResult]::new('role', 'role', [CompletionResultType]::ParameterValue, 'Change a member''s role (promoting to admin needs the emailed code)')
            [CompletionResult]::new('remove', 'remove', [CompletionResultType]::ParameterValue, 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite')
            [CompletionResult]::new('decline', 'decline', [CompletionResultType]::ParameterValue, 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)')
            [CompletionResult]::new('rename', 'rename', [CompletionResultType]::ParameterValue, 'Rename a workspace (admins)')
            [CompletionResult]::new('leave', 'leave', [CompletionResultType]::ParameterValue, 'Leave a workspace you are a member of (an admin re-invites you to come back)')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete a workspace and all its data (needs the emailed code)')
            break
        }
        'crmkit;help;workspaces;list' {
            break
        }
        'crmkit;help;workspaces;create' {
            break
        }
        'crmkit;help;workspaces;use' {
            break
        }
        'crmkit;help;workspaces;show' {
            break
        }
        'crmkit;help;workspaces;members' {
            break
        }
        'crmkit;help;workspaces;invite' {
            break
        }
        'crmkit;help;workspaces;role' {
            break
        }
        'crmkit;help;workspaces;remove' {
            break
        }
        'crmkit;help;workspaces;decline' {
            break
        }
        'crmkit;help;workspaces;rename' {
            break
        }
        'crmkit;help;workspaces;leave' {
            break
        }
        'crmkit;help;workspaces;delete' {
            break
        }
        'crmkit;help;activities' {
            break
        }
        'crmkit;help;reminders' {
            break
        }
        'crmkit;help;audit' {
            break
        }
        'crmkit;help;api' {
            break
        }
        'crmkit;help;completions' {
            break
        }
        'crmkit;help;man' {
            break
        }
        'crmkit;help;serve' {
            break
        }
        'crmkit;help;migrate' {
            break
        }
        'crmkit;help;migrate-data' {
            break
        }
        'crmkit;help;admin' {
            [CompletionResult]::new('set-plan', 'set-plan', [CompletionResultType]::ParameterValue, 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan')
            break
        }
        'crmkit;help;admin;set-plan' {
            break
        }
        'crmkit;help;contacts' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (an email already there updates that contact instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            break
        }
        'crmkit;help;contacts;summary' {
            break
        }
        'crmkit;help;contacts;get' {
            break
        }
        'crmkit;help;contacts;import' {
            break
        }
        'crmkit;help;contacts;delete' {
            break
        }
        'crmkit;help;contacts;activities' {
            break
        }
        'crmkit;help;contacts;log' {
            break
        }
        'crmkit;help;contacts;create' {
            break
        }
        'crmkit;help;contacts;update' {
            break
        }
        'crmkit;help;contacts;list' {
            break
        }
        'crmkit;help;companies' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create (a domain already there updates that company instead)')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            break
        }
        'crmkit;help;companies;summary' {
            break
        }
        'crmkit;help;companies;get' {
            break
        }
        'crmkit;help;companies;import' {
            break
        }
        'crmkit;help;companies;delete' {
            break
        }
        'crmkit;help;companies;create' {
            break
        }
        'crmkit;help;companies;update' {
            break
        }
        'crmkit;help;companies;list' {
            break
        }
        'crmkit;help;companies;activities' {
            break
        }
        'crmkit;help;companies;log' {
            break
        }
        'crmkit;help;deals' {
            [CompletionResult]::new('summary', 'summary', [CompletionResultType]::ParameterValue, 'Counts per group (deals: and amounts per currency), over the filtered records')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'One record')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain')
            [CompletionResult]::new('delete', 'delete', [CompletionResultType]::ParameterValue, 'Delete (asks first; --yes in scripts)')
            [CompletionResult]::new('activities', 'activities', [CompletionResultType]::ParameterValue, 'Activities: a contact''s log, or those naming a deal (companies have none)')
            [CompletionResult]::new('create', 'create', [CompletionResultType]::ParameterValue, 'Create')
            [CompletionResult]::new('update', 'update', [CompletionResultType]::ParameterValue, 'Change some fields')
            [CompletionResult]::new('list', 'list', [CompletionResultType]::ParameterValue, 'List and filter')
            [CompletionResult]::new('log', 'log', [CompletionResultType]::ParameterValue, 'Log an activity (on contacts only; --deal adds a deal)')
            break
        }
        'crmkit;help;deals;summary' {
            break
        }
        'crmkit;help;deals;get' {
            break
        }
        'crmkit;help;deals;import' {
            break
        }
        'crmkit;help;deals;delete' {
            break
        }
        'crmkit;help;deals;activities' {
            break
        }
        'crmkit;help;deals;create' {
            break
        }
        'crmkit;help;deals;update' {
            break
        }
        'crmkit;help;deals;list' {
            break
        }
        'crmkit;help;deals;log' {
            break
        }
        'crmkit;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
