//! `command-rules` (test plugin, world `mail-hook`): answers `imap-command` events from
//! its settings, so tests can see per-command decisions reach the IMAP client.
//!
//! Setting `commands`: a list of `NAME=ACTION` or `NAME ARGS=ACTION` rules, the first
//! matching one wins. NAME is the command name as the front reports it (`DELETE`,
//! `UID FETCH`; case does not matter) or `*`; ARGS, when given, must be the start of the
//! arguments as sent. ACTION is `allow`, `deny:TEXT`, `delay:MILLISECONDS` or `trap` (the
//! plugin panics). No rule = allow. Every decision other than allow is logged.

use wasmail_plugin_sdk::hook::prelude::*;

struct CommandRules;

impl Hook for CommandRules {
    fn describe() -> Description {
        Description::new(
            "command-rules",
            env!("CARGO_PKG_VERSION"),
            &[EventKind::ImapCommand],
        )
    }

    fn on_imap_command(_session: Session, user: String, command: String, args: String) -> Decision {
        for rule in config::get_list_or("commands", "") {
            let Some((pattern, action)) = rule.rsplit_once('=') else {
                continue;
            };
            if !matches(pattern.trim(), &command, &args) {
                continue;
            }
            let action = action.trim();
            if action != "allow" {
                log::info!("{user}: {command} {args}: {action}");
            }
            return parse_action(action);
        }
        Decision::Allow
    }
}

wasmail_plugin_sdk::export_hook!(CommandRules);

/// `pattern` is `*`, `NAME` or `NAME ARGS-PREFIX`; a two-word name (`UID FETCH`) is
/// tried as a name first.
fn matches(pattern: &str, command: &str, args: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(command) {
        return true;
    }
    let Some(prefix) = pattern
        .get(..command.len())
        .filter(|p| p.eq_ignore_ascii_case(command))
        .and_then(|_| pattern[command.len()..].strip_prefix(' '))
    else {
        return false;
    };
    args.starts_with(prefix)
}

fn parse_action(action: &str) -> Decision {
    let (verb, arg) = action.split_once(':').unwrap_or((action, ""));
    match verb {
        "deny" => Decision::deny(arg),
        "delay" => Decision::Delay(arg.trim().parse().unwrap_or(0)),
        "trap" => panic!("command-rules: trap"),
        _ => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        assert!(matches("*", "NOOP", ""));
        assert!(matches("delete", "DELETE", "x"));
        assert!(matches("DELETE Keep", "DELETE", "Keep/sub"));
        assert!(!matches("DELETE Keep", "DELETE", "Other"));
        assert!(matches("UID EXPUNGE", "UID EXPUNGE", "1:*"));
        assert!(!matches("UID", "UID FETCH", "1 FLAGS"));
        assert!(!matches("DELETEALL", "DELETE", "x"));
    }
}
