//! `policy-rules` (test plugin, world `policy`): answers policy requests from its settings.
//!
//! Setting `rules`: list of `recipient=ACTION` pairs, where ACTION is `dunno`, `ok`,
//! `reject:TEXT`, `defer:TEXT`, `hold:TEXT`, `discard:TEXT`, `prepend:HEADER`,
//! `redirect:ADDR` or `trap`; `*` as recipient matches any. The recipient is compared in
//! lower case. Setting `states` (default `RCPT`): protocol states it answers in.

use wasmail_plugin_sdk::policy::prelude::*;

struct PolicyRules;

impl Policy for PolicyRules {
    fn describe() -> Description {
        Description::new("policy-rules", env!("CARGO_PKG_VERSION"))
    }

    fn check(attributes: Attributes) -> Action {
        let state = attributes
            .get_or_empty("protocol_state")
            .to_ascii_uppercase();
        if !config::get_list_or("states", "RCPT")
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&state))
        {
            return Action::Dunno;
        }
        let rcpt = attributes.get_or_empty("recipient").to_ascii_lowercase();
        for rule in config::get_list_or("rules", "") {
            let Some((who, action)) = rule.split_once('=') else {
                continue;
            };
            if who != "*" && who != rcpt {
                continue;
            }
            let (verb, text) = action.split_once(':').unwrap_or((action, ""));
            let text = text.to_string();
            return match verb {
                "ok" => Action::Ok,
                "reject" => Action::Reject(text),
                "defer" => Action::Defer(text),
                "hold" => Action::Hold(text),
                "discard" => Action::Discard(text),
                "prepend" => Action::Prepend(text),
                "redirect" => Action::Redirect(text),
                "trap" => panic!("policy-rules: trap for {rcpt}"),
                _ => Action::Dunno,
            };
        }
        Action::Dunno
    }
}

wasmail_plugin_sdk::export_policy!(PolicyRules);
