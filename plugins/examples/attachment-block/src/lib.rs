//! `attachment-block`: rejects messages carrying a file whose extension is on a block list,
//! including double extensions such as `invoice.pdf.exe`. See README.md.

use wasmail_plugin_sdk::milter::prelude::*;

/// Extensions blocked when the setting `blocked_extensions` is absent.
const DEFAULT_BLOCKED: &str = "exe,scr,bat,cmd,com,js,vbs,jar,msi,ps1";

/// Body buffer cap for the `message` capability's MIME view.
const BODY_CAP: u32 = 10 << 20;

struct AttachmentBlock;

impl Filter for AttachmentBlock {
    fn describe() -> Description {
        Description::new(
            "attachment-block",
            env!("CARGO_PKG_VERSION"),
            &[Stage::Headers, Stage::Body, Stage::EndOfMessage],
            BodyMode::Whole(BODY_CAP),
        )
    }

    fn on_end_of_message() -> Outcome {
        let blocked = blocked_list(&config::get_list_or("blocked_extensions", DEFAULT_BLOCKED));
        for part in message::parts() {
            let Some(name) = part.filename.as_deref() else {
                continue;
            };
            if let Some(ext) = blocked_extension(name, &blocked) {
                log::info!("blocking part {} {:?} (.{ext})", part.index, name);
                return Verdict::reject(554, "5.7.1", &rejection_text(name, &ext)).into();
            }
        }
        Outcome::default()
    }
}

wasmail_plugin_sdk::export_filter!(AttachmentBlock);

/// Normalises the configured extensions: lower case, without a leading dot.
fn blocked_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

/// The blocked extension of `filename`, if it has one.
///
/// The name is taken without any directory part and without trailing dots and whitespace
/// (Windows ignores them, so `virus.exe.` runs as `.exe`). The last extension decides, so
/// `invoice.pdf.exe` is caught by `exe`; `blocked` must be lower case.
fn blocked_extension(filename: &str, blocked: &[String]) -> Option<String> {
    let base = filename.rsplit(['/', '\\']).next().unwrap_or(filename);
    let base = base.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let (_, ext) = base.rsplit_once('.')?;
    let ext = ext.trim().to_lowercase();
    blocked.contains(&ext).then_some(ext)
}

/// The SMTP reply text (one line, no control characters).
fn rejection_text(filename: &str, ext: &str) -> String {
    let shown: String = filename
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    format!("Attachment \"{shown}\" rejected: .{ext} files are not accepted")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        blocked_list(&wasmail_plugin_sdk::config::parse_list(DEFAULT_BLOCKED))
    }

    #[test]
    fn simple_and_case_insensitive() {
        let b = defaults();
        assert_eq!(blocked_extension("setup.exe", &b).as_deref(), Some("exe"));
        assert_eq!(blocked_extension("SETUP.EXE", &b).as_deref(), Some("exe"));
        assert_eq!(blocked_extension("run.Ps1", &b).as_deref(), Some("ps1"));
        assert_eq!(blocked_extension("report.pdf", &b), None);
        assert_eq!(blocked_extension("README", &b), None);
        assert_eq!(blocked_extension("exe", &b), None);
    }

    #[test]
    fn double_extensions_and_tricks() {
        let b = defaults();
        assert_eq!(
            blocked_extension("invoice.pdf.exe", &b).as_deref(),
            Some("exe")
        );
        assert_eq!(
            blocked_extension("invoice.pdf.exe.", &b).as_deref(),
            Some("exe")
        );
        assert_eq!(
            blocked_extension("invoice.pdf.exe . ", &b).as_deref(),
            Some("exe")
        );
        assert_eq!(
            blocked_extension("C:\\tmp\\x.js", &b).as_deref(),
            Some("js")
        );
        assert_eq!(blocked_extension("dir/x.vbs", &b).as_deref(), Some("vbs"));
        assert_eq!(blocked_extension(".bat", &b).as_deref(), Some("bat"));
        assert_eq!(blocked_extension("setup.exe.pdf", &b), None);
    }

    #[test]
    fn configured_list_is_normalised() {
        let b = blocked_list(&["  .ZIP".to_string(), String::new(), "iso".to_string()]);
        assert_eq!(b, ["zip", "iso"]);
        assert_eq!(blocked_extension("a.zip", &b).as_deref(), Some("zip"));
        assert_eq!(blocked_extension("a.exe", &b), None);
    }

    #[test]
    fn reply_text_is_one_line() {
        assert_eq!(
            rejection_text("a\r\nb.exe", "exe"),
            "Attachment \"a??b.exe\" rejected: .exe files are not accepted"
        );
    }
}
