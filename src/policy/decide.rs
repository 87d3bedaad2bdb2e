//! Combining the answers of a policy chain into the one `action=` Postfix accepts.
//!
//! Postfix takes exactly one access(5) action per request, so the chain is folded:
//! - plugins run in order (the global `[policy] chain`, then the recipient domain's
//!   registry chain);
//! - `DUNNO` (and a failed plugin with `on_error = "continue"`) passes to the next plugin;
//! - `PREPEND` is remembered and the chain goes on: it is the answer only if no later
//!   plugin decides. Postfix accepts one action per request, so a second `PREPEND` is
//!   dropped (logged);
//! - any other action (`OK`, `REJECT`, `DEFER`, `HOLD`, `DISCARD`, `REDIRECT`, `FILTER`,
//!   ...) ends the chain and is the answer;
//! - a failed plugin with `on_error = "tempfail"` ends the chain with `[policy]
//!   tempfail_action` (default `DEFER_IF_PERMIT 4.3.0 ...`): the mail is deferred unless
//!   another restriction rejects it. Never a permanent reject on an internal failure.
//! - nothing decided → `DUNNO` (Postfix goes on with its next restriction).

use crate::host::calls::PolicyAction;

/// What one plugin produced.
#[derive(Debug, Clone)]
pub enum Step {
    /// The plugin answered.
    Action(PolicyAction),
    /// The plugin failed; `tempfail` is its `on_error = "tempfail"`.
    Failed {
        /// Whether the failure must defer the mail.
        tempfail: bool,
    },
}

/// The chain's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The access(5) action text (without `action=`).
    pub action: String,
    /// The plugin whose answer this is (None for the default `DUNNO`).
    pub by: Option<String>,
    /// Notes for the log: dropped PREPENDs, invalid actions.
    pub notes: Vec<String>,
}

/// access(5) action text for `a`; Err(reason) for an action that cannot be sent.
pub fn action_text(a: &PolicyAction) -> Result<String, String> {
    fn with(verb: &str, text: &str) -> String {
        let text = text.trim();
        if text.is_empty() {
            verb.to_string()
        } else {
            format!("{verb} {text}")
        }
    }
    let text = match a {
        PolicyAction::Dunno => "DUNNO".to_string(),
        PolicyAction::Ok => "OK".to_string(),
        PolicyAction::Reject(t) => with("REJECT", t),
        PolicyAction::Defer(t) => with("DEFER", t),
        PolicyAction::DeferIfPermit(t) => with("DEFER_IF_PERMIT", t),
        PolicyAction::Hold(t) => with("HOLD", t),
        PolicyAction::Discard(t) => with("DISCARD", t),
        PolicyAction::Prepend(h) => {
            let (name, _) = h
                .split_once(':')
                .ok_or_else(|| format!("PREPEND {h:?} is not `Name: value`"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("PREPEND {h:?} has an invalid header name"));
            }
            format!("PREPEND {}", h.trim())
        }
        PolicyAction::Redirect(addr) => {
            if !addr.contains('@') || addr.contains(char::is_whitespace) {
                return Err(format!("REDIRECT {addr:?} is not an address"));
            }
            format!("REDIRECT {addr}")
        }
        PolicyAction::Filter(t) => {
            if !t.contains(':') {
                return Err(format!("FILTER {t:?} is not transport:destination"));
            }
            format!("FILTER {}", t.trim())
        }
        PolicyAction::Other(t) => {
            let t = t.trim();
            if t.is_empty() {
                return Err("an empty action".into());
            }
            t.to_string()
        }
    };
    if text.contains(['\n', '\r', '\0']) {
        return Err(format!("{text:?} spans lines"));
    }
    Ok(text)
}

/// Runs `chain` through `run` and folds the answers (see the module docs).
pub fn combine(
    chain: &[String],
    mut run: impl FnMut(&str) -> Step,
    tempfail_action: &str,
) -> Decision {
    let mut prepend: Option<(String, String)> = None;
    let mut notes = Vec::new();
    for name in chain {
        match run(name) {
            Step::Failed { tempfail: true } => {
                return Decision {
                    action: tempfail_action.to_string(),
                    by: Some(name.clone()),
                    notes,
                };
            }
            Step::Failed { tempfail: false } => {}
            Step::Action(PolicyAction::Dunno) => {}
            Step::Action(a) => {
                let text = match action_text(&a) {
                    Ok(t) => t,
                    Err(why) => {
                        notes.push(format!("plugin {name}: ignored {why}"));
                        continue;
                    }
                };
                if matches!(a, PolicyAction::Prepend(_)) {
                    if let Some((first, _)) = &prepend {
                        notes.push(format!(
                            "plugin {name}: dropped `{text}` (Postfix takes one action per request; plugin {first} prepends already)"
                        ));
                    } else {
                        prepend = Some((name.clone(), text));
                    }
                    continue;
                }
                return Decision {
                    action: text,
                    by: Some(name.clone()),
                    notes,
                };
            }
        }
    }
    match prepend {
        Some((by, action)) => Decision {
            action,
            by: Some(by),
            notes,
        },
        None => Decision {
            action: "DUNNO".into(),
            by: None,
            notes,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMP: &str = "DEFER_IF_PERMIT 4.3.0 try later";

    fn chain(steps: Vec<(&str, Step)>) -> Decision {
        let names: Vec<String> = steps.iter().map(|(n, _)| n.to_string()).collect();
        let mut it = steps.into_iter();
        combine(&names, |_| it.next().unwrap().1, TEMP)
    }

    #[test]
    fn empty_chain_is_dunno() {
        let d = combine(&[], |_| unreachable!(), TEMP);
        assert_eq!((d.action.as_str(), d.by), ("DUNNO", None));
    }

    #[test]
    fn first_decisive_action_wins() {
        let d = chain(vec![
            ("a", Step::Action(PolicyAction::Dunno)),
            ("b", Step::Action(PolicyAction::Reject("5.7.1 no".into()))),
            ("c", Step::Action(PolicyAction::Ok)),
        ]);
        assert_eq!(d.action, "REJECT 5.7.1 no");
        assert_eq!(d.by.as_deref(), Some("b"));
    }

    #[test]
    fn prepend_waits_for_later_decisions() {
        let d = chain(vec![
            ("a", Step::Action(PolicyAction::Prepend("X-A: 1".into()))),
            ("b", Step::Action(PolicyAction::Prepend("X-B: 2".into()))),
            ("c", Step::Action(PolicyAction::Dunno)),
        ]);
        assert_eq!(d.action, "PREPEND X-A: 1");
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        let d = chain(vec![
            ("a", Step::Action(PolicyAction::Prepend("X-A: 1".into()))),
            ("b", Step::Action(PolicyAction::Defer("4.7.1 later".into()))),
        ]);
        assert_eq!(d.action, "DEFER 4.7.1 later");
    }

    #[test]
    fn failures_follow_on_error() {
        let d = chain(vec![
            ("a", Step::Failed { tempfail: false }),
            ("b", Step::Action(PolicyAction::Hold("look".into()))),
        ]);
        assert_eq!(d.action, "HOLD look");
        let d = chain(vec![
            ("a", Step::Failed { tempfail: true }),
            ("b", Step::Action(PolicyAction::Ok)),
        ]);
        assert_eq!(d.action, TEMP);
        assert_eq!(d.by.as_deref(), Some("a"));
    }

    #[test]
    fn invalid_actions_are_skipped() {
        let d = chain(vec![
            ("a", Step::Action(PolicyAction::Prepend("no colon".into()))),
            ("b", Step::Action(PolicyAction::Other("REJECT x\ny".into()))),
            ("c", Step::Action(PolicyAction::Redirect("nobody".into()))),
        ]);
        assert_eq!(d.action, "DUNNO");
        assert_eq!(d.notes.len(), 3, "{:?}", d.notes);
    }

    #[test]
    fn action_texts() {
        assert_eq!(
            action_text(&PolicyAction::Reject(String::new())).unwrap(),
            "REJECT"
        );
        assert_eq!(
            action_text(&PolicyAction::DeferIfPermit("4.7.1 x".into())).unwrap(),
            "DEFER_IF_PERMIT 4.7.1 x"
        );
        assert_eq!(
            action_text(&PolicyAction::Filter("smtp:[127.0.0.1]:10025".into())).unwrap(),
            "FILTER smtp:[127.0.0.1]:10025"
        );
        assert_eq!(
            action_text(&PolicyAction::Other("550 5.7.1 go away".into())).unwrap(),
            "550 5.7.1 go away"
        );
    }
}
