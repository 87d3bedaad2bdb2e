//! `delivery-rules` (test plugin, world `mail-hook`, event `delivery`): decides each LMTP
//! delivery from its settings.
//!
//! Setting `rules`: list of `recipient=ACTION` pairs, where ACTION is `allow`,
//! `deny:TEXT`, `delay:MILLISECONDS` or `trap`; `*` as recipient matches any. The
//! recipient is compared in lower case; the first matching rule wins, no match allows.
//! Every decision is logged (`delivery-rules: RECIPIENT from SENDER over PROTOCOL: ACTION`).

use wasmail_plugin_sdk::hook::prelude::*;

struct DeliveryRules;

impl Hook for DeliveryRules {
    fn describe() -> Description {
        Description::new(
            "delivery-rules",
            env!("CARGO_PKG_VERSION"),
            &[EventKind::Delivery],
        )
    }

    fn on_delivery(session: Session, sender: String, recipient: String) -> Decision {
        let rcpt = recipient.to_ascii_lowercase();
        let action = config::get_list_or("rules", "")
            .into_iter()
            .filter_map(|rule| {
                let (who, action) = rule.split_once('=')?;
                (who == "*" || who == rcpt).then(|| action.to_string())
            })
            .next()
            .unwrap_or_else(|| "allow".into());
        log::info!(
            "delivery-rules: {rcpt} from {sender} over {}: {action}",
            session.protocol
        );
        let (verb, arg) = action.split_once(':').unwrap_or((&action, ""));
        match verb {
            "deny" => Decision::deny(arg),
            "delay" => Decision::Delay(arg.parse().unwrap_or(0)),
            "trap" => panic!("delivery-rules: trap for {rcpt}"),
            _ => Decision::Allow,
        }
    }
}

wasmail_plugin_sdk::export_hook!(DeliveryRules);
