//! `wasmail-container-init`: PID 1 of a FastContainer, as a small binary of its own.
//!
//! The same code as `wasmail container-init` ([`wasmail::fastcontainer::init`]), linked
//! without the plugin host, the services and the CLI, so the exec at every cold start maps a
//! few hundred kilobytes instead of the whole `wasmail` binary (the largest part of the
//! spawn latency; see benches/RESULTS.md). The spawner uses it when it sits next to the
//! running `wasmail`, else falls back to `/proc/self/exe container-init`.
//!
//! Usage (by the spawner only): `wasmail-container-init container-init --spec-fd N
//! --status-fd N --exit-fd N`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let fd = |name: &str| -> Option<i32> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse().ok()
    };
    match (
        args.get(1).map(String::as_str),
        fd("--spec-fd"),
        fd("--status-fd"),
        fd("--exit-fd"),
    ) {
        (Some("container-init"), Some(spec), Some(status), Some(exit)) => {
            std::process::exit(wasmail::fastcontainer::init::run(spec, status, exit))
        }
        _ => {
            eprintln!(
                "wasmail-container-init: started by the FastContainer spawner only \
                 (container-init --spec-fd N --status-fd N --exit-fd N)"
            );
            std::process::exit(2)
        }
    }
}
