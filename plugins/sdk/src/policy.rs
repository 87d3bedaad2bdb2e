//! World `policy`: plugins that answer Postfix SMTPD access policy delegation requests.
//!
//! Implement [`Policy`] and export it with [`export_policy!`](crate::export_policy).

#![allow(missing_docs)] // the generated bindings carry the WIT documentation

wit_bindgen::generate!({
    world: "policy",
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
    default_bindings_module: "wasmail_plugin_sdk::policy",
    export_macro_name: "export",
});

pub use self::exports::wasmail::plugin::access::{Action, Description};

/// Everything a policy plugin usually needs: `use wasmail_plugin_sdk::policy::prelude::*;`.
pub mod prelude {
    pub use super::{Action, Attributes, Description, Policy};
    pub use crate::{config, kv, log, send};
}

/// The attributes of one policy request, exactly as Postfix sent them (`request`,
/// `protocol_state`, `client_address`, `sender`, `recipient`, `recipient_count`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes(pub Vec<(String, String)>);

impl Attributes {
    /// The value of the first attribute called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `""` when absent.
    pub fn get_or_empty(&self, name: &str) -> &str {
        self.get(name).unwrap_or("")
    }

    /// Iterates over all attributes in request order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Attributes(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// A policy plugin. Export the implementing type with
/// [`export_policy!`](crate::export_policy).
pub trait Policy: 'static {
    /// Declares the plugin's name and version. Called once at load time.
    fn describe() -> Description;

    /// Decides on one policy request.
    fn check(attributes: Attributes) -> Action;
}

impl<T: Policy> exports::wasmail::plugin::access::Guest for T {
    fn describe() -> Description {
        T::describe()
    }
    fn check(attributes: Vec<(String, String)>) -> Action {
        T::check(Attributes(attributes))
    }
}

impl Description {
    /// A description with the given name and version.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_lookup() {
        let a: Attributes = [("sender", "a@b"), ("recipient_count", "2"), ("sender", "x")]
            .into_iter()
            .collect();
        assert_eq!(a.get("sender"), Some("a@b"));
        assert_eq!(a.get("nope"), None);
        assert_eq!(a.get_or_empty("nope"), "");
        assert_eq!(a.iter().count(), 3);
    }
}
