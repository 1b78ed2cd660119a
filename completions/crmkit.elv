
use builtin;
use str;

set edit:completion:arg-completer[crmkit] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'crmkit'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'crmkit'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand login 'Sign in by emailed code and store the token'
            cand logout 'Revoke this session''s token on the server and forget it here'
            cand whoami 'Show who you are, your workspace, role, plan and usage'
            cand auth 'Token helpers'
            cand tokens 'Your sessions'
            cand workspaces 'Workspaces, members, invites and roles'
            cand activities 'Recent activities'
            cand reminders 'Contacts and deals whose follow-up is due'
            cand audit 'The workspace audit log, newest first'
            cand api 'Raw API call with the stored token, output as received'
            cand completions 'Print shell completions (bash, zsh, fish, powershell, elvish)'
            cand man 'Print the man page (roff; `crmkit man | man -l -`)'
            cand serve 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)'
            cand migrate 'Apply pending database migrations (serve also does this at start)'
            cand migrate-data 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)'
            cand admin 'Operator commands that act on the database directly'
            cand contacts 'Contacts (people)'
            cand companies 'Companies'
            cand deals 'Deals'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;login'= {
            cand --email 'Your email'
            cand --code 'The emailed code (asked for on a terminal otherwise)'
            cand --token-name 'Label of this session in `crmkit tokens list`'
            cand --workspace 'Work in this workspace (name, id or handle) rather than the one sign-in picks (your personal one, as a rule)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --request-only 'Only email a code now; sign in later with --code'
            cand --with-token 'Read a token from stdin instead'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;logout'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;whoami'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;auth'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand token 'Print the stored token (the only command that shows it)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;auth;token'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;auth;help'= {
            cand token 'Print the stored token (the only command that shows it)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;auth;help;token'= {
        }
        &'crmkit;auth;help;help'= {
        }
        &'crmkit;tokens'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand list 'Your active tokens'
            cand revoke 'Revoke one'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;tokens;list'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;tokens;revoke'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;tokens;help'= {
            cand list 'Your active tokens'
            cand revoke 'Revoke one'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;tokens;help;list'= {
        }
        &'crmkit;tokens;help;revoke'= {
        }
        &'crmkit;tokens;help;help'= {
        }
        &'crmkit;workspaces'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand list 'Workspaces you belong to'
            cand create 'Create one (you become admin)'
            cand use 'Switch: mint a token for that workspace and make it current'
            cand show 'One workspace: your role, its plan, and its usage against the plan''s caps'
            cand members 'Members and pending invites'
            cand invite 'Invite someone by email (inviting as admin needs the emailed code)'
            cand role 'Change a member''s role (promoting to admin needs the emailed code)'
            cand remove 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
            cand decline 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
            cand rename 'Rename a workspace (admins)'
            cand leave 'Leave a workspace you are a member of (an admin re-invites you to come back)'
            cand delete 'Delete a workspace and all its data (needs the emailed code)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;workspaces;list'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;create'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;use'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'crmkit;workspaces;show'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;members'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;invite'= {
            cand --role 'admin or member [default: member; a resent invite keeps its role]'
            cand --code 'code'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;role'= {
            cand --code 'code'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;remove'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'Remove a member without asking (needed when not on a terminal)'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;decline'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;rename'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;leave'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'yes'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;delete'= {
            cand --code 'code'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'yes'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;workspaces;help'= {
            cand list 'Workspaces you belong to'
            cand create 'Create one (you become admin)'
            cand use 'Switch: mint a token for that workspace and make it current'
            cand show 'One workspace: your role, its plan, and its usage against the plan''s caps'
            cand members 'Members and pending invites'
            cand invite 'Invite someone by email (inviting as admin needs the emailed code)'
            cand role 'Change a member''s role (promoting to admin needs the emailed code)'
            cand remove 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
            cand decline 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
            cand rename 'Rename a workspace (admins)'
            cand leave 'Leave a workspace you are a member of (an admin re-invites you to come back)'
            cand delete 'Delete a workspace and all its data (needs the emailed code)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;workspaces;help;list'= {
        }
        &'crmkit;workspaces;help;create'= {
        }
        &'crmkit;workspaces;help;use'= {
        }
        &'crmkit;workspaces;help;show'= {
        }
        &'crmkit;workspaces;help;members'= {
        }
        &'crmkit;workspaces;help;invite'= {
        }
        &'crmkit;workspaces;help;role'= {
        }
        &'crmkit;workspaces;help;remove'= {
        }
        &'crmkit;workspaces;help;decline'= {
        }
        &'crmkit;workspaces;help;rename'= {
        }
        &'crmkit;workspaces;help;leave'= {
        }
        &'crmkit;workspaces;help;delete'= {
        }
        &'crmkit;workspaces;help;help'= {
        }
        &'crmkit;activities'= {
            cand --contact 'Only this contact''s'
            cand --deal 'Only this deal''s'
            cand --kind 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)'
            cand --since 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)'
            cand --until 'Only activities before TIME (RFC 3339)'
            cand --author 'Only what this user logged (u_… or user/u_…)'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --oldest-first 'Oldest first (newest first by default)'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;reminders'= {
            cand --days 'Also what is due within N days'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;audit'= {
            cand --target 'Only this record''s history: a handle or id (deal/d_…, c_…)'
            cand --action 'Only these actions (deal.update) or kinds (deal); repeat or comma-separate'
            cand --user 'Only what this user did (u_… or user/u_…)'
            cand --since 'Only entries at or after TIME (RFC 3339)'
            cand --until 'Only entries before TIME (RFC 3339)'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;api'= {
            cand --data 'JSON body, @file or - for stdin'
            cand --header 'Extra header, K:V (repeatable)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;completions'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;man'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;serve'= {
            cand --config 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)'
            cand --bind 'Listen address [default: 127.0.0.1:8080]'
            cand --database-url '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]'
            cand --base-url 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]'
            cand --smtp-url '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode'
            cand --smtp-ca-file 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)'
            cand --mail-from 'Sender address [default: crmkit <no-reply@localhost>]'
            cand --token-idle-ttl 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]'
            cand --db-max-connections 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]'
            cand --db-startup-wait 'How long start-up keeps retrying an unreachable database [default: 30s]'
            cand --body-limit 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]'
            cand --log 'Log filter, e.g. info or crmkit=debug [default: info]'
            cand --trust-proxy 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)'
            cand --limit-contacts 'The default plan''s contacts cap [default: 1000]'
            cand --limit-companies 'The default plan''s companies cap [default: 1000]'
            cand --limit-deals 'The default plan''s deals cap [default: 1000]'
            cand --limit-members 'The default plan''s members cap, pending invites included [default: 10]'
            cand --limit-workspaces 'The default plan''s workspaces-per-user cap [default: 5]'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'crmkit;migrate'= {
            cand --config 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)'
            cand --bind 'Listen address [default: 127.0.0.1:8080]'
            cand --database-url '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]'
            cand --base-url 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]'
            cand --smtp-url '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode'
            cand --smtp-ca-file 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)'
            cand --mail-from 'Sender address [default: crmkit <no-reply@localhost>]'
            cand --token-idle-ttl 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]'
            cand --db-max-connections 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]'
            cand --db-startup-wait 'How long start-up keeps retrying an unreachable database [default: 30s]'
            cand --body-limit 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]'
            cand --log 'Log filter, e.g. info or crmkit=debug [default: info]'
            cand --trust-proxy 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)'
            cand --limit-contacts 'The default plan''s contacts cap [default: 1000]'
            cand --limit-companies 'The default plan''s companies cap [default: 1000]'
            cand --limit-deals 'The default plan''s deals cap [default: 1000]'
            cand --limit-members 'The default plan''s members cap, pending invites included [default: 10]'
            cand --limit-workspaces 'The default plan''s workspaces-per-user cap [default: 5]'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --dry-run 'Only print the migrations that would run'
            cand --json 'Print JSON'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'crmkit;migrate-data'= {
            cand --from 'Source database URL'
            cand --to 'Target database URL (must be empty)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;admin'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand set-plan 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;admin;set-plan'= {
            cand --config 'TOML config file (keys as the flags, with `_`; plans as `[plans.NAME]` tables)'
            cand --bind 'Listen address [default: 127.0.0.1:8080]'
            cand --database-url '`sqlite://PATH?mode=rwc` or `postgres://…` [default: SQLite file in the data dir]'
            cand --base-url 'Public URL used in the manual, OAuth metadata and emails [default: http://<bind>]'
            cand --smtp-url '`smtp://host:port`, `smtp+starttls://user:pass@host:587` or `smtps://user:pass@host:465`; unset = local mail mode'
            cand --smtp-ca-file 'PEM file of CA certificates to trust for the SMTP server''s certificate, besides the public ones (smtp+starttls:// and smtps:// only)'
            cand --mail-from 'Sender address [default: crmkit <no-reply@localhost>]'
            cand --token-idle-ttl 'A token dies after this much inactivity, e.g. 90d, 12h, 3s [default: 90d]'
            cand --db-max-connections 'Database pool size [default: 8 for SQLite, 10 for PostgreSQL]'
            cand --db-startup-wait 'How long start-up keeps retrying an unreachable database [default: 30s]'
            cand --body-limit 'Largest request body accepted, e.g. 1MiB, 512KiB, 4MiB (at most 32MiB) [default: 1MiB]'
            cand --log 'Log filter, e.g. info or crmkit=debug [default: info]'
            cand --trust-proxy 'Trust the last X-Forwarded-For hop as the client address (behind a proxy you run)'
            cand --limit-contacts 'The default plan''s contacts cap [default: 1000]'
            cand --limit-companies 'The default plan''s companies cap [default: 1000]'
            cand --limit-deals 'The default plan''s deals cap [default: 1000]'
            cand --limit-members 'The default plan''s members cap, pending invites included [default: 10]'
            cand --limit-workspaces 'The default plan''s workspaces-per-user cap [default: 5]'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
        }
        &'crmkit;admin;help'= {
            cand set-plan 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;admin;help;set-plan'= {
        }
        &'crmkit;admin;help;help'= {
        }
        &'crmkit;contacts'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand create 'Create (an email already there updates that contact instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;contacts;summary'= {
            cand --by 'Group by these fields, comma-separated (deals: status,stage by default)'
            cand --search 'Substring search over the key fields'
            cand --where 'Any filter of the query language (repeatable)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;get'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;import'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;delete'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'yes'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;activities'= {
            cand --kind 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)'
            cand --since 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)'
            cand --until 'Only activities before TIME (RFC 3339)'
            cand --author 'Only what this user logged (u_… or user/u_…)'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --oldest-first 'Oldest first (newest first by default)'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;log'= {
            cand --kind 'call, email, meeting, note or task'
            cand --body 'body'
            cand --deal 'Deal id or handle'
            cand --at 'When it happened, RFC3339 (default now)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;create'= {
            cand --name 'name'
            cand --email 'email'
            cand --phone 'phone'
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --stage 'stage'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --contact 'Contact id or handle (deals)'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;update'= {
            cand --name 'name'
            cand --email 'email'
            cand --phone 'phone'
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --stage 'stage'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --contact 'Contact id or handle (deals)'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;list'= {
            cand --stage 'stage'
            cand --tag 'Has this tag (repeatable: all of them)'
            cand --email 'email'
            cand --search 'Substring search over the key fields'
            cand --sort 'field or -field'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --status 'status'
            cand --where 'Any filter of the query language, e.g. ''stage=in:lead,customer'' (repeatable; the manual: crmkit api GET /help)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;contacts;help'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand create 'Create (an email already there updates that contact instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;contacts;help;summary'= {
        }
        &'crmkit;contacts;help;get'= {
        }
        &'crmkit;contacts;help;import'= {
        }
        &'crmkit;contacts;help;delete'= {
        }
        &'crmkit;contacts;help;activities'= {
        }
        &'crmkit;contacts;help;log'= {
        }
        &'crmkit;contacts;help;create'= {
        }
        &'crmkit;contacts;help;update'= {
        }
        &'crmkit;contacts;help;list'= {
        }
        &'crmkit;contacts;help;help'= {
        }
        &'crmkit;companies'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand create 'Create (a domain already there updates that company instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;companies;summary'= {
            cand --by 'Group by these fields, comma-separated (deals: status,stage by default)'
            cand --search 'Substring search over the key fields'
            cand --where 'Any filter of the query language (repeatable)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;get'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;import'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;delete'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'yes'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;create'= {
            cand --name 'name'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --email 'email'
            cand --phone 'phone'
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --contact 'Contact id or handle (deals)'
            cand --stage 'stage'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;update'= {
            cand --name 'name'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --email 'email'
            cand --phone 'phone'
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --contact 'Contact id or handle (deals)'
            cand --stage 'stage'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;list'= {
            cand --tag 'Has this tag (repeatable: all of them)'
            cand --search 'Substring search over the key fields'
            cand --sort 'field or -field'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --stage 'stage'
            cand --status 'status'
            cand --email 'email'
            cand --where 'Any filter of the query language, e.g. ''domain=acme.com'' (repeatable; the manual: crmkit api GET /help)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;activities'= {
            cand --kind 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)'
            cand --since 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)'
            cand --until 'Only activities before TIME (RFC 3339)'
            cand --author 'Only what this user logged (u_… or user/u_…)'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --oldest-first 'Oldest first (newest first by default)'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;log'= {
            cand --kind 'call, email, meeting, note or task'
            cand --body 'body'
            cand --deal 'Deal id or handle'
            cand --at 'When it happened, RFC3339 (default now)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;companies;help'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand create 'Create (a domain already there updates that company instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;companies;help;summary'= {
        }
        &'crmkit;companies;help;get'= {
        }
        &'crmkit;companies;help;import'= {
        }
        &'crmkit;companies;help;delete'= {
        }
        &'crmkit;companies;help;create'= {
        }
        &'crmkit;companies;help;update'= {
        }
        &'crmkit;companies;help;list'= {
        }
        &'crmkit;companies;help;activities'= {
        }
        &'crmkit;companies;help;log'= {
        }
        &'crmkit;companies;help;help'= {
        }
        &'crmkit;deals'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand create 'Create'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;deals;summary'= {
            cand --by 'Group by these fields, comma-separated (deals: status,stage by default)'
            cand --search 'Substring search over the key fields'
            cand --where 'Any filter of the query language (repeatable)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;get'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;import'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;delete'= {
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --yes 'yes'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;activities'= {
            cand --kind 'Only these kinds: call, email, meeting, note, task (repeat, or comma-separated)'
            cand --since 'Only activities at or after TIME (RFC 3339, e.g. 2026-06-01T00:00:00Z)'
            cand --until 'Only activities before TIME (RFC 3339)'
            cand --author 'Only what this user logged (u_… or user/u_…)'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --oldest-first 'Oldest first (newest first by default)'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;create'= {
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --contact 'Contact id or handle (deals)'
            cand --stage 'stage'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --name 'name'
            cand --email 'email'
            cand --phone 'phone'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;update'= {
            cand --title 'Job title (contacts) or deal title'
            cand --company 'Company id or handle'
            cand --contact 'Contact id or handle (deals)'
            cand --stage 'stage'
            cand --status 'status'
            cand --amount-cents 'amount-cents'
            cand --currency 'currency'
            cand --tag 'Tag (repeatable; replaces the tags)'
            cand --custom 'key=value (repeatable): true, null, [..], {..} and numbers as JSON (a number only if kept exactly: 1.10 stays text), else text'
            cand --follow-up 'Follow-up time, RFC3339'
            cand --note 'Follow-up note'
            cand --data 'The whole body as JSON, @file.json or - for stdin (flags override it)'
            cand --clear 'Clear a field (repeatable): its body name, e.g. follow_up_at, company_id, tags'
            cand --name 'name'
            cand --email 'email'
            cand --phone 'phone'
            cand --domain 'domain'
            cand --industry 'industry'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;list'= {
            cand --stage 'stage'
            cand --tag 'Has this tag (repeatable: all of them)'
            cand --status 'status'
            cand --search 'Substring search over the key fields'
            cand --sort 'field or -field'
            cand --limit 'At most N per page (1..200)'
            cand --cursor 'Continue from a `# next:` cursor'
            cand --email 'email'
            cand --where 'Any filter of the query language, e.g. ''amount_cents=gte:100000'' (repeatable; the manual: crmkit api GET /help)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --all 'Follow cursors to the end'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;log'= {
            cand --kind 'call, email, meeting, note or task'
            cand --body 'body'
            cand --deal 'Deal id or handle'
            cand --at 'When it happened, RFC3339 (default now)'
            cand --server 'Server URL'
            cand --profile 'Keep this sign-in apart from others to the same server (e.g. `work`, `personal`)'
            cand --format 'Force the output format'
            cand --json 'Print JSON'
            cand -h 'Print help'
            cand --help 'Print help'
        }
        &'crmkit;deals;help'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand create 'Create'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;deals;help;summary'= {
        }
        &'crmkit;deals;help;get'= {
        }
        &'crmkit;deals;help;import'= {
        }
        &'crmkit;deals;help;delete'= {
        }
        &'crmkit;deals;help;activities'= {
        }
        &'crmkit;deals;help;create'= {
        }
        &'crmkit;deals;help;update'= {
        }
        &'crmkit;deals;help;list'= {
        }
        &'crmkit;deals;help;log'= {
        }
        &'crmkit;deals;help;help'= {
        }
        &'crmkit;help'= {
            cand login 'Sign in by emailed code and store the token'
            cand logout 'Revoke this session''s token on the server and forget it here'
            cand whoami 'Show who you are, your workspace, role, plan and usage'
            cand auth 'Token helpers'
            cand tokens 'Your sessions'
            cand workspaces 'Workspaces, members, invites and roles'
            cand activities 'Recent activities'
            cand reminders 'Contacts and deals whose follow-up is due'
            cand audit 'The workspace audit log, newest first'
            cand api 'Raw API call with the stored token, output as received'
            cand completions 'Print shell completions (bash, zsh, fish, powershell, elvish)'
            cand man 'Print the man page (roff; `crmkit man | man -l -`)'
            cand serve 'Run the HTTP API server (SQLite in the data dir by default, 127.0.0.1:8080)'
            cand migrate 'Apply pending database migrations (serve also does this at start)'
            cand migrate-data 'Copy every table of one database into a new, empty one (e.g. SQLite to PostgreSQL)'
            cand admin 'Operator commands that act on the database directly'
            cand contacts 'Contacts (people)'
            cand companies 'Companies'
            cand deals 'Deals'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'crmkit;help;login'= {
        }
        &'crmkit;help;logout'= {
        }
        &'crmkit;help;whoami'= {
        }
        &'crmkit;help;auth'= {
            cand token 'Print the stored token (the only command that shows it)'
        }
        &'crmkit;help;auth;token'= {
        }
        &'crmkit;help;tokens'= {
            cand list 'Your active tokens'
            cand revoke 'Revoke one'
        }
        &'crmkit;help;tokens;list'= {
        }
        &'crmkit;help;tokens;revoke'= {
        }
        &'crmkit;help;workspaces'= {
            cand list 'Workspaces you belong to'
            cand create 'Create one (you become admin)'
            cand use 'Switch: mint a token for that workspace and make it current'
            cand show 'One workspace: your role, its plan, and its usage against the plan''s caps'
            cand members 'Members and pending invites'
            cand invite 'Invite someone by email (inviting as admin needs the emailed code)'
            cand role 'Change a member''s role (promoting to admin needs the emailed code)'
            cand remove 'Remove a member (asks first; their tokens for it stop working), or withdraw a pending invite'
            cand decline 'Decline an invite to a workspace (`workspaces list` shows it as status=invited)'
            cand rename 'Rename a workspace (admins)'
            cand leave 'Leave a workspace you are a member of (an admin re-invites you to come back)'
            cand delete 'Delete a workspace and all its data (needs the emailed code)'
        }
        &'crmkit;help;workspaces;list'= {
        }
        &'crmkit;help;workspaces;create'= {
        }
        &'crmkit;help;workspaces;use'= {
        }
        &'crmkit;help;workspaces;show'= {
        }
        &'crmkit;help;workspaces;members'= {
        }
        &'crmkit;help;workspaces;invite'= {
        }
        &'crmkit;help;workspaces;role'= {
        }
        &'crmkit;help;workspaces;remove'= {
        }
        &'crmkit;help;workspaces;decline'= {
        }
        &'crmkit;help;workspaces;rename'= {
        }
        &'crmkit;help;workspaces;leave'= {
        }
        &'crmkit;help;workspaces;delete'= {
        }
        &'crmkit;help;activities'= {
        }
        &'crmkit;help;reminders'= {
        }
        &'crmkit;help;audit'= {
        }
        &'crmkit;help;api'= {
        }
        &'crmkit;help;completions'= {
        }
        &'crmkit;help;man'= {
        }
        &'crmkit;help;serve'= {
        }
        &'crmkit;help;migrate'= {
        }
        &'crmkit;help;migrate-data'= {
        }
        &'crmkit;help;admin'= {
            cand set-plan 'Put a workspace (w_…) or a user (email; for the workspaces cap) on a configured plan'
        }
        &'crmkit;help;admin;set-plan'= {
        }
        &'crmkit;help;contacts'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
            cand create 'Create (an email already there updates that contact instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
        }
        &'crmkit;help;contacts;summary'= {
        }
        &'crmkit;help;contacts;get'= {
        }
        &'crmkit;help;contacts;import'= {
        }
        &'crmkit;help;contacts;delete'= {
        }
        &'crmkit;help;contacts;activities'= {
        }
        &'crmkit;help;contacts;log'= {
        }
        &'crmkit;help;contacts;create'= {
        }
        &'crmkit;help;contacts;update'= {
        }
        &'crmkit;help;contacts;list'= {
        }
        &'crmkit;help;companies'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand create 'Create (a domain already there updates that company instead)'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
        }
        &'crmkit;help;companies;summary'= {
        }
        &'crmkit;help;companies;get'= {
        }
        &'crmkit;help;companies;import'= {
        }
        &'crmkit;help;companies;delete'= {
        }
        &'crmkit;help;companies;create'= {
        }
        &'crmkit;help;companies;update'= {
        }
        &'crmkit;help;companies;list'= {
        }
        &'crmkit;help;companies;activities'= {
        }
        &'crmkit;help;companies;log'= {
        }
        &'crmkit;help;deals'= {
            cand summary 'Counts per group (deals: and amounts per currency), over the filtered records'
            cand get 'One record'
            cand import 'Create many from a JSON array or JSON lines (FILE, or - for stdin); each is a create, so contacts and companies upsert by email/domain'
            cand delete 'Delete (asks first; --yes in scripts)'
            cand activities 'Activities: a contact''s log, or those naming a deal (companies have none)'
            cand create 'Create'
            cand update 'Change some fields'
            cand list 'List and filter'
            cand log 'Log an activity (on contacts only; --deal adds a deal)'
        }
        &'crmkit;help;deals;summary'= {
        }
        &'crmkit;help;deals;get'= {
        }
        &'crmkit;help;deals;import'= {
        }
        &'crmkit;help;deals;delete'= {
        }
        &'crmkit;help;deals;activities'= {
        }
        &'crmkit;help;deals;create'= {
        }
        &'crmkit;help;deals;update'= {
        }
        &'crmkit;help;deals;list'= {
        }
        &'crmkit;help;deals;log'= {
        }
        &'crmkit;help;help'= {
        }
    ]
    $completions[$command]
}
