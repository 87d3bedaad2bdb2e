//! Capability `send`: queue a message for delivery through the configured SMTP relay
//! (notifications, auto-replies). Needs the `send` grant; sending is rate-limited per plugin.
//! Not available in the `table` world.

pub use crate::milter::wasmail::plugin::send::Outgoing;

use crate::milter::wasmail::plugin::send as raw;

/// Queues `message` for delivery. Fails when the rate limit is hit, the message is too big,
/// or the addresses are invalid; delivery itself happens in the background.
pub fn queue(message: &Outgoing) -> Result<(), String> {
    raw::queue(message)
}

impl Outgoing {
    /// A message from `sender` (empty for a null sender) to `recipients`; `raw` is the complete
    /// message, headers and body, with CRLF line ends.
    pub fn new(
        sender: impl Into<String>,
        recipients: Vec<String>,
        raw: impl Into<Vec<u8>>,
    ) -> Self {
        Outgoing {
            sender: sender.into(),
            recipients,
            raw: raw.into(),
        }
    }
}
