//! World `table`: plugins that answer Postfix table lookups (socketmap / tcp_table).
//!
//! Implement [`Table`] and export it with [`export_table!`](crate::export_table).

#![allow(missing_docs)] // the generated bindings carry the WIT documentation

wit_bindgen::generate!({
    world: "table",
    path: "../../wit",
    additional_derives: [PartialEq, Eq],
    with: {
        "wasmail:plugin/types@0.1.0": crate::milter::wasmail::plugin::types,
        "wasmail:plugin/log@0.1.0": crate::milter::wasmail::plugin::log,
        "wasmail:plugin/config@0.1.0": crate::milter::wasmail::plugin::config,
        "wasmail:plugin/kv@0.1.0": crate::milter::wasmail::plugin::kv,
    },
    pub_export_macro: true,
    default_bindings_module: "wasmail_plugin_sdk::table",
    export_macro_name: "export",
});

pub use self::exports::wasmail::plugin::lookup::{Answer, Description, Key};

/// Everything a table plugin usually needs: `use wasmail_plugin_sdk::table::prelude::*;`.
pub mod prelude {
    pub use super::{Answer, Description, Key, Table};
    pub use crate::{config, kv, log};
}

/// A table plugin. Export the implementing type with
/// [`export_table!`](crate::export_table).
pub trait Table: 'static {
    /// Declares the plugin's name, version and the tables it answers. Called once at load
    /// time.
    fn describe() -> Description;

    /// Looks up `key` in `table` (one of the names from [`describe`](Table::describe)).
    fn lookup(table: String, key: Key) -> Answer;
}

impl<T: Table> exports::wasmail::plugin::lookup::Guest for T {
    fn describe() -> Description {
        T::describe()
    }
    fn lookup(table: String, key: Key) -> Answer {
        T::lookup(table, key)
    }
}

impl Description {
    /// A description with the given name, version and table names.
    pub fn new(name: impl Into<String>, version: impl Into<String>, tables: &[&str]) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
        }
    }
}

impl Answer {
    /// [`Answer::Found`] with this value.
    pub fn found(value: impl Into<String>) -> Self {
        Answer::Found(value.into())
    }

    /// [`Answer::Perm`] (Postfix treats it as a configuration error) with this reason.
    pub fn perm(reason: impl Into<String>) -> Self {
        Answer::Perm(reason.into())
    }

    /// [`Answer::Temp`] (Postfix defers) with this reason.
    pub fn temp(reason: impl Into<String>) -> Self {
        Answer::Temp(reason.into())
    }
}
