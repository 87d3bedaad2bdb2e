//! `hook-verdicts` (test plugin, world `mail-hook`): answers `auth` and `post-login`
//! events from its settings, so tests can see each decision reach the client.
//!
//! Settings `auth` and `post_login`: lists of `USER=ACTION` rules, the first matching one
//! wins; USER is compared in lower case, `*` matches anyone and `*@domain` a domain's
//! users. ACTION is `allow`, `deny:TEXT`, `delay:MILLISECONDS`,
//! `rewrite:NAME=VALUE;NAME=VALUE` or `trap` (the plugin panics). No rule = allow.

use wasmail_plugin_sdk::hook::prelude::*;

struct HookVerdicts;

impl Hook for HookVerdicts {
    fn describe() -> Description {
        Description::new(
            "hook-verdicts",
            env!("CARGO_PKG_VERSION"),
            &[EventKind::Auth, EventKind::PostLogin],
        )
    }

    fn on_auth(_session: Session, user: String, _mechanism: String) -> Decision {
        decide("auth", &user)
    }

    fn on_post_login(_session: Session, user: String) -> Decision {
        decide("post_login", &user)
    }
}

wasmail_plugin_sdk::export_hook!(HookVerdicts);

fn decide(setting: &str, user: &str) -> Decision {
    let user = user.to_ascii_lowercase();
    for rule in config::get_list_or(setting, "") {
        let Some((who, action)) = rule.split_once('=') else {
            continue;
        };
        if !matches(who.trim(), &user) {
            continue;
        }
        let decision = parse_action(action.trim());
        log::info!("{setting} {user}: {action}");
        return decision;
    }
    Decision::Allow
}

fn matches(pattern: &str, user: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*@") {
        Some(domain) => user.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None => pattern == "*" || pattern == user,
    }
}

fn parse_action(action: &str) -> Decision {
    let (verb, arg) = action.split_once(':').unwrap_or((action, ""));
    match verb {
        "deny" => Decision::deny(arg),
        "delay" => Decision::Delay(arg.trim().parse().unwrap_or(0)),
        "rewrite" => Decision::Rewrite(
            arg.split(';')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        ),
        "trap" => panic!("hook-verdicts: trap"),
        _ => Decision::Allow,
    }
}
