//! World `mail-hook`: plugins that decide on IMAP/POP3/LMTP sessions and Dovecot events.
//!
//! Implement [`Hook`] (only [`Hook::describe`] is required; every event defaults to
//! [`Decision::Allow`]) and export it with [`export_hook!`](crate::export_hook).

#![allow(missing_docs)] // the generated bindings carry the WIT documentation

wit_bindgen::generate!({
    world: "mail-hook",
    path: "../../wit",
    additional_derives: [PartialEq, Eq],
    with: {
        "wasmail:plugin/types@0.1.0": crate::milter::wasmail::plugin::types,
        "wasmail:plugin/log@0.1.0": crate::milter::wasmail::plugin::log,
        "wasmail:plugin/config@0.1.0": crate::milter::wasmail::plugin::config,
        "wasmail:plugin/kv@0.1.0": crate::milter::wasmail::plugin::kv,
        "wasmail:plugin/send@0.1.0": crate::milter::wasmail::plugin::send,
    },
    pub_export_macro: true,
    default_bindings_module: "wasmail_plugin_sdk::hook",
    export_macro_name: "export",
});

pub use self::exports::wasmail::plugin::hook::{Decision, Description, Event, EventKind, Session};

/// Everything a hook plugin usually needs: `use wasmail_plugin_sdk::hook::prelude::*;`.
pub mod prelude {
    pub use super::{Decision, Description, Event, EventKind, Hook, Session};
    pub use crate::{config, kv, log, send};
}

/// A mail-hook plugin. The default [`on_event`](Hook::on_event) dispatches to one method per
/// event kind, each of which defaults to [`Decision::Allow`]; implement the ones listed in
/// [`describe`](Hook::describe). Export the implementing type with
/// [`export_hook!`](crate::export_hook).
pub trait Hook: 'static {
    /// Declares the plugin's name, version and events. Called once at load time.
    fn describe() -> Description;

    /// A client connected.
    fn on_connect(session: Session) -> Decision {
        let _ = session;
        Decision::Allow
    }

    /// A login attempt (before the password is checked): user name and SASL mechanism.
    fn on_auth(session: Session, user: String, mechanism: String) -> Decision {
        let _ = (session, user, mechanism);
        Decision::Allow
    }

    /// A successful login with the final user name.
    fn on_post_login(session: Session, user: String) -> Decision {
        let _ = (session, user);
        Decision::Allow
    }

    /// An IMAP command after login: user, command name (upper-case), arguments as sent.
    fn on_imap_command(session: Session, user: String, command: String, args: String) -> Decision {
        let _ = (session, user, command, args);
        Decision::Allow
    }

    /// A delivery through the LMTP front: sender and one recipient.
    fn on_delivery(session: Session, sender: String, recipient: String) -> Decision {
        let _ = (session, sender, recipient);
        Decision::Allow
    }

    /// Decides on one event; by default dispatches to the `on_*` methods above.
    fn on_event(event: Event) -> Decision {
        match event {
            Event::Connect(s) => Self::on_connect(s),
            Event::Auth((s, user, mech)) => Self::on_auth(s, user, mech),
            Event::PostLogin((s, user)) => Self::on_post_login(s, user),
            Event::ImapCommand((s, user, cmd, args)) => Self::on_imap_command(s, user, cmd, args),
            Event::Delivery((s, sender, rcpt)) => Self::on_delivery(s, sender, rcpt),
        }
    }
}

impl<T: Hook> exports::wasmail::plugin::hook::Guest for T {
    fn describe() -> Description {
        T::describe()
    }
    fn on_event(event: Event) -> Decision {
        T::on_event(event)
    }
}

impl Description {
    /// A description with the given name, version and events.
    pub fn new(name: impl Into<String>, version: impl Into<String>, events: &[EventKind]) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            events: events.to_vec(),
        }
    }
}

impl Decision {
    /// [`Decision::Deny`] with this message.
    pub fn deny(message: impl Into<String>) -> Self {
        Decision::Deny(message.into())
    }
}
