//! Host-side bindings generated from `wit/plugin.wit`, one module per world. The
//! capability interfaces (`log`, `config`, `kv`, ...) are generated once, in
//! [`milter`], and shared by the other worlds through `with`.

/// The `milter-filter` world (and the capability interfaces every world shares).
pub mod milter {
    wasmtime::component::bindgen!({
        world: "milter-filter",
        path: "wit",
        imports: { default: trappable },
    });
}

/// The `table` world.
pub mod table {
    wasmtime::component::bindgen!({
        world: "table",
        path: "wit",
        imports: { default: trappable },
        with: {
            "wasmail:plugin/types": super::milter::wasmail::plugin::types,
            "wasmail:plugin/log": super::milter::wasmail::plugin::log,
            "wasmail:plugin/config": super::milter::wasmail::plugin::config,
            "wasmail:plugin/kv": super::milter::wasmail::plugin::kv,
        },
    });
}

/// The `policy` world.
pub mod policy {
    wasmtime::component::bindgen!({
        world: "policy",
        path: "wit",
        imports: { default: trappable },
        with: {
            "wasmail:plugin/types": super::milter::wasmail::plugin::types,
            "wasmail:plugin/log": super::milter::wasmail::plugin::log,
            "wasmail:plugin/config": super::milter::wasmail::plugin::config,
            "wasmail:plugin/kv": super::milter::wasmail::plugin::kv,
            "wasmail:plugin/send": super::milter::wasmail::plugin::send,
        },
    });
}

/// The `mail-hook` world.
pub mod hook {
    wasmtime::component::bindgen!({
        world: "mail-hook",
        path: "wit",
        imports: { default: trappable },
        with: {
            "wasmail:plugin/types": super::milter::wasmail::plugin::types,
            "wasmail:plugin/log": super::milter::wasmail::plugin::log,
            "wasmail:plugin/config": super::milter::wasmail::plugin::config,
            "wasmail:plugin/kv": super::milter::wasmail::plugin::kv,
            "wasmail:plugin/send": super::milter::wasmail::plugin::send,
        },
    });
}
