//! The macro store, with libmilter's semantics.
//!
//! A `SMFIC_MACRO` packet sets the macros for the command that follows it (replacing that
//! stage's earlier values). A stage command clears the macros of every later stage, so
//! RCPT macros do not leak into the next MAIL; ABORT clears the message stages and keeps
//! the CONNECT and HELO ones. Lookups accept `x` and `{x}` alike and search the most
//! recent stage first. Packets for codes no stage uses are accepted and ignored.

use bytes::Bytes;

use crate::flags::cmd;

/// Slots in stage order.
const SLOTS: usize = 9;

fn slot(code: u8) -> Option<usize> {
    Some(match code {
        cmd::CONNECT => 0,
        cmd::HELO => 1,
        cmd::MAIL => 2,
        cmd::RCPT => 3,
        cmd::DATA => 4,
        cmd::HEADER => 5,
        cmd::EOH => 6,
        cmd::BODY => 7,
        cmd::BODYEOB => 8,
        _ => return None,
    })
}

/// Macro values received so far on a connection.
#[derive(Debug, Default)]
pub struct Macros {
    stages: [Vec<(Bytes, Bytes)>; SLOTS],
}

impl Clone for Macros {
    fn clone(&self) -> Self {
        Macros {
            stages: self.stages.clone(),
        }
    }

    /// Reuses `self`'s buffers: once they have grown to the source's sizes, a copy taken
    /// before every stage costs reference-count increments and no allocation.
    fn clone_from(&mut self, source: &Self) {
        for (to, from) in self.stages.iter_mut().zip(&source.stages) {
            to.clone_from(from);
        }
    }
}

fn bare(name: &[u8]) -> &[u8] {
    match name {
        [b'{', inner @ .., b'}'] => inner,
        other => other,
    }
}

impl Macros {
    /// Stores the macros of a `SMFIC_MACRO` packet for command `code`.
    pub fn set(&mut self, code: u8, pairs: Vec<(Bytes, Bytes)>) {
        if let Some(i) = slot(code) {
            self.stages[i] = pairs;
        }
    }

    /// Called when command `code` arrives: clears the macros of every later stage.
    pub fn enter(&mut self, code: u8) {
        if let Some(i) = slot(code) {
            for later in &mut self.stages[i + 1..] {
                later.clear();
            }
        }
    }

    /// ABORT: forgets the message stages, keeps CONNECT and HELO.
    pub fn abort(&mut self) {
        for s in &mut self.stages[2..] {
            s.clear();
        }
    }

    /// Forgets everything (QUIT_NC: a new SMTP connection follows).
    pub fn clear(&mut self) {
        for s in &mut self.stages {
            s.clear();
        }
    }

    /// The value of `name` (`i` or `{i}`), most recent stage first.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let want = bare(name.as_bytes());
        self.stages.iter().rev().find_map(|stage| {
            stage
                .iter()
                .rev()
                .find(|(n, _)| bare(n) == want)
                .map(|(_, v)| &v[..])
        })
    }

    /// The value of `name` as text (invalid UTF-8 replaced).
    pub fn get_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }

    /// Every macro currently set, most recent stage last, names without braces.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.stages.iter().flatten().map(|(n, v)| (bare(n), &v[..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(Bytes, Bytes)> {
        list.iter()
            .map(|(n, v)| (Bytes::from(n.to_string()), Bytes::from(v.to_string())))
            .collect()
    }

    #[test]
    fn clone_from_copies_every_stage_and_forgets_what_the_source_lacks() {
        let mut src = Macros::default();
        src.set(b'C', pairs(&[("j", "mx")]));
        src.set(b'M', pairs(&[("{mail_addr}", "a@x")]));
        let mut copy = Macros::default();
        copy.set(b'R', pairs(&[("{rcpt_addr}", "stale@y")]));
        copy.clone_from(&src);
        assert_eq!(copy.get("j"), Some(&b"mx"[..]));
        assert_eq!(copy.get("mail_addr"), Some(&b"a@x"[..]));
        assert_eq!(copy.get("rcpt_addr"), None);
        assert_eq!(copy.iter().count(), src.iter().count());
    }

    #[test]
    fn braces_are_optional_on_both_sides() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("j", "mx"), ("{daemon_name}", "smtpd")]));
        assert_eq!(m.get("{j}"), Some(&b"mx"[..]));
        assert_eq!(m.get("daemon_name"), Some(&b"smtpd"[..]));
        assert_eq!(m.get("{daemon_name}"), Some(&b"smtpd"[..]));
        assert_eq!(m.get("nope"), None);
    }

    #[test]
    fn later_stages_win_and_are_cleared_by_earlier_commands() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("i", "conn")]));
        m.enter(b'C');
        m.set(b'M', pairs(&[("{mail_addr}", "a@x")]));
        m.enter(b'M');
        m.set(b'R', pairs(&[("{rcpt_addr}", "b@y"), ("i", "Q1")]));
        m.enter(b'R');
        assert_eq!(m.get("i"), Some(&b"Q1"[..]));
        m.set(b'M', pairs(&[("{mail_addr}", "c@x")]));
        m.enter(b'M');
        assert_eq!(m.get("rcpt_addr"), None);
        assert_eq!(m.get("i"), Some(&b"conn"[..]));
    }

    #[test]
    fn abort_keeps_connect_and_helo() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("j", "mx")]));
        m.set(b'H', pairs(&[("{tls_version}", "TLSv1.3")]));
        m.set(b'M', pairs(&[("{mail_addr}", "a@x")]));
        m.set(b'L', pairs(&[("i", "Q")]));
        m.abort();
        assert!(m.get("j").is_some() && m.get("tls_version").is_some());
        assert!(m.get("mail_addr").is_none() && m.get("i").is_none());
    }

    #[test]
    fn unknown_codes_and_duplicates() {
        let mut m = Macros::default();
        m.set(b'Z', pairs(&[("x", "1")]));
        assert_eq!(m.get("x"), None);
        m.set(b'C', pairs(&[("x", "1"), ("x", "2")]));
        assert_eq!(m.get("x"), Some(&b"2"[..]));
    }
}
