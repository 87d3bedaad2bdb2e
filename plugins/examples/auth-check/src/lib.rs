//! `auth-check`: authenticates each message (SPF, DKIM, DMARC, ARC) with the host's `auth`
//! capability, records the result in an `Authentication-Results` header and enforces the
//! DMARC policy the author's domain publishes. See README.md.

use wasmail_plugin_sdk::milter::auth::{self, AuthResult, DmarcPolicy};
use wasmail_plugin_sdk::milter::prelude::*;

/// Body buffer cap: DKIM body hashes need the whole body.
const BODY_CAP: u32 = 2 << 20;

struct AuthCheck;

impl Filter for AuthCheck {
    fn describe() -> Description {
        Description::new(
            "auth-check",
            env!("CARGO_PKG_VERSION"),
            &[
                Stage::MailFrom,
                Stage::Headers,
                Stage::Body,
                Stage::EndOfMessage,
            ],
            BodyMode::Whole(BODY_CAP),
        )
    }

    fn on_end_of_message() -> Outcome {
        let report = auth::check();
        let settings = Settings {
            reject_on_dmarc_reject: config::get_bool_or("reject_on_dmarc_reject", true),
            quarantine_on_dmarc_quarantine: config::get_bool_or(
                "quarantine_on_dmarc_quarantine",
                true,
            ),
        };
        let action = decide(report.dmarc, report.dmarc_policy, &settings);
        log::info!(
            "spf={:?} dmarc={:?} policy={:?} domain={} action={:?}",
            report.spf,
            report.dmarc,
            report.dmarc_policy,
            report.dmarc_domain,
            action
        );
        let edits = vec![Edit::add_header(
            "Authentication-Results",
            report.authentication_results,
        )];
        Outcome::new(action.verdict(&report.dmarc_domain), edits)
    }
}

wasmail_plugin_sdk::export_filter!(AuthCheck);

/// The plugin's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    /// Reject (550 5.7.1) when DMARC fails and the policy is `reject`; quarantine otherwise.
    reject_on_dmarc_reject: bool,
    /// Quarantine when DMARC fails and the policy is `quarantine`; continue otherwise.
    quarantine_on_dmarc_quarantine: bool,
}

/// What to do with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Continue,
    Quarantine,
    Reject,
}

impl Action {
    fn verdict(self, domain: &str) -> Verdict {
        match self {
            Action::Continue => Verdict::Continue,
            Action::Quarantine => Verdict::quarantine(&format!("DMARC failed for {domain}")),
            Action::Reject => Verdict::reject(
                550,
                "5.7.1",
                &format!("Message rejected: DMARC policy of {domain} (reject) failed"),
            ),
        }
    }
}

/// The DMARC enforcement decision.
fn decide(dmarc: AuthResult, policy: DmarcPolicy, settings: &Settings) -> Action {
    if dmarc != AuthResult::Fail {
        return Action::Continue;
    }
    match policy {
        DmarcPolicy::Reject if settings.reject_on_dmarc_reject => Action::Reject,
        DmarcPolicy::Reject => Action::Quarantine,
        DmarcPolicy::Quarantine if settings.quarantine_on_dmarc_quarantine => Action::Quarantine,
        _ => Action::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Settings = Settings {
        reject_on_dmarc_reject: true,
        quarantine_on_dmarc_quarantine: true,
    };

    #[test]
    fn only_a_dmarc_fail_is_enforced() {
        for r in [
            AuthResult::Pass,
            AuthResult::None,
            AuthResult::Softfail,
            AuthResult::Neutral,
            AuthResult::Temperror,
            AuthResult::Permerror,
        ] {
            assert_eq!(decide(r, DmarcPolicy::Reject, &DEFAULTS), Action::Continue);
        }
    }

    #[test]
    fn policies() {
        let fail = AuthResult::Fail;
        assert_eq!(decide(fail, DmarcPolicy::Reject, &DEFAULTS), Action::Reject);
        assert_eq!(
            decide(fail, DmarcPolicy::Quarantine, &DEFAULTS),
            Action::Quarantine
        );
        assert_eq!(decide(fail, DmarcPolicy::None, &DEFAULTS), Action::Continue);
        assert_eq!(
            decide(fail, DmarcPolicy::Unspecified, &DEFAULTS),
            Action::Continue
        );
    }

    #[test]
    fn settings_soften_enforcement() {
        let s = Settings {
            reject_on_dmarc_reject: false,
            quarantine_on_dmarc_quarantine: false,
        };
        let fail = AuthResult::Fail;
        assert_eq!(decide(fail, DmarcPolicy::Reject, &s), Action::Quarantine);
        assert_eq!(decide(fail, DmarcPolicy::Quarantine, &s), Action::Continue);
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            Action::Reject.verdict("example.com"),
            Verdict::reject(
                550,
                "5.7.1",
                "Message rejected: DMARC policy of example.com (reject) failed"
            )
        );
        assert_eq!(
            Action::Quarantine.verdict("example.com"),
            Verdict::Quarantine("DMARC failed for example.com".into())
        );
    }
}
