//! Weighted rendezvous (highest random weight) hashing: every host computes the same
//! preferred host for a domain from the same member list, without a coordinator, and when
//! a host leaves only its own domains move.
//!
//! Score of host `h` with weight `w` for domain `d`: `-w / ln(u)`, where `u` in (0, 1) is
//! derived from SHA-256 of `d \0 h`. The host with the highest score wins; with equal
//! weights that is a uniform choice, and a host's share is proportional to its weight
//! (Schindelhauer and Schomaker's logarithmic method).

use sha2::{Digest, Sha256};

/// The score of `host` (weight `capacity`) for `domain`.
pub fn score(domain: &str, host: &str, capacity: u32) -> f64 {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(host.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits of the hash, mapped into the open interval (0, 1).
    let bits = u64::from_be_bytes(first) >> 11;
    let u = (bits as f64 + 0.5) / (1u64 << 53) as f64;
    -f64::from(capacity.max(1)) / u.ln()
}

/// Candidates (name, capacity) ordered from most to least preferred for `domain`; ties
/// (practically impossible) broken by name.
pub fn ranked<'a>(domain: &str, hosts: impl IntoIterator<Item = (&'a str, u32)>) -> Vec<&'a str> {
    let mut scored: Vec<(f64, &str)> = hosts
        .into_iter()
        .map(|(name, cap)| (score(domain, name, cap), name))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_only_the_leaving_hosts_domains_move() {
        let three = [("a", 100), ("b", 100), ("c", 100)];
        let two = [("a", 100), ("b", 100)];
        let mut moved = 0;
        for i in 0..1000 {
            let d = format!("d{i}.example");
            let before = ranked(&d, three)[0];
            assert_eq!(before, ranked(&d, three)[0], "deterministic");
            let after = ranked(&d, two)[0];
            if before != "c" {
                assert_eq!(before, after, "{d} moved although its host stayed");
            } else {
                moved += 1;
            }
        }
        assert!((250..420).contains(&moved), "c had {moved} of 1000");
    }

    #[test]
    fn shares_follow_capacity() {
        let hosts = [("small", 100), ("big", 300)];
        let big = (0..4000)
            .filter(|i| ranked(&format!("d{i}"), hosts)[0] == "big")
            .count();
        assert!((2800..3200).contains(&big), "big got {big} of 4000");
    }
}
