//! Password hashes in Dovecot's `{SCHEME}hash` form.
//!
//! The registry stores hashes that Dovecot's passdb can check itself, so the same value
//! works whether wasmail or Dovecot authenticates:
//! - [`hash_password`] produces `{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$salt$hash`
//!   (OWASP's recommended Argon2id parameters, a random 16-byte salt);
//! - [`verify_password`] accepts `{ARGON2ID}`, `{ARGON2I}`, `{SHA512-CRYPT}` and
//!   `{SHA256-CRYPT}` hashes, as `doveadm pw` writes them (scheme names are
//!   case-insensitive, as in Dovecot).
//!
//! Plain passwords travel in a [`Secret`], which never prints and is wiped (best effort)
//! when dropped.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use password_hash::rand_core::OsRng;
use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::{RegistryError, Result};

/// Argon2id memory cost of new hashes, in KiB (19 MiB: OWASP's recommendation).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id passes over memory of new hashes.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes of new hashes.
pub const ARGON2_P_COST: u32 = 1;

/// Largest Argon2 memory cost [`verify_password`] will spend on a stored hash, in KiB
/// (1 GiB), so a corrupt or hostile hash cannot exhaust memory.
const MAX_VERIFY_M_COST_KIB: u32 = 1 << 20;
/// Largest Argon2 pass count [`verify_password`] will run.
const MAX_VERIFY_T_COST: u32 = 64;

/// The schemes [`verify_password`] understands, by their Dovecot names.
pub const SCHEMES: [&str; 4] = ["ARGON2ID", "ARGON2I", "SHA512-CRYPT", "SHA256-CRYPT"];

/// A supported Dovecot password scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `{ARGON2ID}` with a PHC string `$argon2id$...`.
    Argon2id,
    /// `{ARGON2I}` with a PHC string `$argon2i$...`.
    Argon2i,
    /// `{SHA512-CRYPT}`: glibc crypt `$6$...`.
    Sha512Crypt,
    /// `{SHA256-CRYPT}`: glibc crypt `$5$...`.
    Sha256Crypt,
}

/// Splits `{SCHEME}rest` into the scheme and the rest; None when there is no `{...}`
/// prefix or the scheme is not supported.
fn split(stored: &str) -> Option<(Scheme, &str)> {
    let rest = stored.strip_prefix('{')?;
    let (name, hash) = rest.split_once('}')?;
    let scheme = match name.to_ascii_uppercase().as_str() {
        "ARGON2ID" => Scheme::Argon2id,
        "ARGON2I" => Scheme::Argon2i,
        "SHA512-CRYPT" => Scheme::Sha512Crypt,
        "SHA256-CRYPT" => Scheme::Sha256Crypt,
        _ => return None,
    };
    Some((scheme, hash))
}

/// The scheme of a stored `{SCHEME}hash`, if it is one [`verify_password`] supports.
pub fn scheme(stored: &str) -> Option<Scheme> {
    split(stored).map(|(s, _)| s)
}

/// A plain-text password. Debug output is redacted, there is no `Display`, and the bytes
/// are overwritten when it is dropped (best effort: copies made by the allocator or the
/// terminal are out of reach).
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(plain: String) -> Secret {
        Secret(plain)
    }
    /// The password itself; keep the borrow short and never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(plain: String) -> Secret {
        Secret(plain)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        // Keep the writes from being optimised away as dead stores.
        std::hint::black_box(&bytes);
    }
}

/// Hashes `plain` as `{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, which
/// Dovecot (2.3+, built with libsodium) verifies natively. Rejects an empty password.
pub fn hash_password(plain: &str) -> Result<String> {
    if plain.is_empty() {
        return Err(RegistryError::Invalid("the password is empty".into()));
    }
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|e| RegistryError::Backend(format!("argon2 parameters: {e}")))?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::generate(&mut OsRng);
    let hash = hasher
        .hash_password(plain.as_bytes(), &salt)
        .map_err(|e| RegistryError::Invalid(format!("cannot hash the password: {e}")))?;
    Ok(format!("{{ARGON2ID}}{hash}"))
}

/// True when `plain` matches the stored `{SCHEME}hash`. Comparisons are constant-time (the
/// argon2 and sha-crypt crates compare digests with `subtle`).
///
/// Returns false, rather than an error, for anything that cannot be checked: an unknown
/// or missing scheme (such as Dovecot's `{PLAIN}` or `{CRYPT}`, deliberately unsupported:
/// the registry only stores salted, slow hashes), a malformed hash, an `{ARGON2ID}` prefix
/// on a hash of another Argon2 variant, or Argon2 costs above 1 GiB / 64 passes. A login
/// then fails the same way as with a wrong password, which reveals nothing to the client.
pub fn verify_password(stored: &str, plain: &str) -> bool {
    let Some((scheme, hash)) = split(stored) else {
        return false;
    };
    match scheme {
        Scheme::Argon2id => verify_argon2(hash, "argon2id", plain),
        Scheme::Argon2i => verify_argon2(hash, "argon2i", plain),
        Scheme::Sha512Crypt => sha_crypt::sha512_check(plain, hash).is_ok(),
        Scheme::Sha256Crypt => sha_crypt::sha256_check(plain, hash).is_ok(),
    }
}

fn verify_argon2(phc: &str, algorithm: &str, plain: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    if hash.algorithm.as_str() != algorithm {
        return false;
    }
    match Params::try_from(&hash) {
        Ok(p) if p.m_cost() <= MAX_VERIFY_M_COST_KIB && p.t_cost() <= MAX_VERIFY_T_COST => {}
        _ => return false,
    }
    // The verifier takes algorithm, version and parameters from the hash itself.
    Argon2::default()
        .verify_password(plain.as_bytes(), &hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `doveadm pw -s SHA512-CRYPT -p secret` (Dovecot 2.3, Debian).
    const DOVECOT_SHA512: &str = "{SHA512-CRYPT}$6$tV8xPiQJQSRP3kDN$dcnGGn3qulI32hbq6BKttMlduYC3khAqC87CosPiPECMnkq36bqqhmREzkprJ2fz5o6jdMUyJfS8rftkrbmIs.";
    /// `doveadm pw -s SHA256-CRYPT -p secret`.
    const DOVECOT_SHA256: &str =
        "{SHA256-CRYPT}$5$.SFNM3w0YGa3.M1l$Q.uV.sEfQ5EXuY963OXIj2vYkvb8ClwZv2cQgKb63g.";
    /// `doveadm pw -s ARGON2ID -p secret` (libsodium's defaults: m=64 MiB, t=3).
    const DOVECOT_ARGON2ID: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$e/aD5QJKywbBguLPAP+YzQ$/V3BIfWtExCb/nUhQRKDiaI2fPzhRoQsH8lTd2Qs33w";
    /// `doveadm pw -s ARGON2I -p secret`.
    const DOVECOT_ARGON2I: &str = "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$zFeFp/EpfGnBv+ViwhmZNg$BtTCl3WeV6l2Mt5XR+n7A836e6orPHAyIkMv+tj411M";

    #[test]
    fn round_trip_and_wrong_password() {
        let h = hash_password("correct horse").unwrap();
        assert!(
            h.starts_with("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"),
            "{h}"
        );
        assert_eq!(scheme(&h), Some(Scheme::Argon2id));
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        // Salted: the same password hashes differently each time.
        assert_ne!(h, hash_password("correct horse").unwrap());
    }

    #[test]
    fn empty_password_is_rejected() {
        assert!(matches!(hash_password(""), Err(RegistryError::Invalid(_))));
    }

    #[test]
    fn dovecot_crypt_hashes_verify() {
        for h in [DOVECOT_SHA512, DOVECOT_SHA256] {
            assert!(verify_password(h, "secret"), "{h}");
            assert!(!verify_password(h, "Secret"), "{h}");
        }
        // Scheme names are case-insensitive, as in Dovecot.
        let lower = DOVECOT_SHA512.replace("{SHA512-CRYPT}", "{sha512-crypt}");
        assert!(verify_password(&lower, "secret"));
    }

    #[test]
    fn dovecot_argon2_hashes_verify() {
        // (Slow in debug builds: 64 MiB, 3 passes each; one wrong-password case is enough.)
        assert!(verify_password(DOVECOT_ARGON2ID, "secret"));
        assert!(!verify_password(DOVECOT_ARGON2ID, "secrets"));
        assert!(verify_password(DOVECOT_ARGON2I, "secret"));
    }

    #[test]
    fn unusable_hashes_are_false() {
        for h in [
            "",
            "secret",
            "{PLAIN}secret",
            "{CRYPT}$6$abc$def",
            "{SHA512-CRYPT}garbage",
            "{SHA512-CRYPT}$5$.SFNM3w0YGa3.M1l$Q.uV.sEfQ5EXuY963OXIj2vYkvb8ClwZv2cQgKb63g.",
            "{ARGON2ID}$argon2id$v=19$m=19456",
            // The right hash under the wrong Argon2 variant's prefix.
            &DOVECOT_ARGON2I.replace("{ARGON2I}", "{ARGON2ID}"),
            // Costs beyond the verification cap.
            "{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$e/aD5QJKywbBguLPAP+YzQ$/V3BIfWtExCb/nUhQRKDiaI2fPzhRoQsH8lTd2Qs33w",
        ] {
            assert!(!verify_password(h, "secret"), "{h}");
        }
        assert_eq!(scheme("{PLAIN}x"), None);
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn our_hash_is_accepted_by_dovecot() {
        let Some(doveadm) = ["/usr/bin/doveadm", "/usr/local/bin/doveadm"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.is_file())
        else {
            eprintln!("SKIPPED: our_hash_is_accepted_by_dovecot: `doveadm` is not installed");
            return;
        };
        let h = hash_password("secret").unwrap();
        let out = std::process::Command::new(doveadm)
            .args(["pw", "-t", &h, "-p", "secret"])
            .output()
            .expect("run doveadm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("(verified)"),
            "doveadm pw -t rejected {h}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(doveadm)
            .args(["pw", "-t", &h, "-p", "wrong"])
            .output()
            .expect("run doveadm");
        assert!(!out.status.success(), "doveadm accepted a wrong password");
    }
}
