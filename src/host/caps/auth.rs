//! Capability `auth`: SPF, DKIM, DMARC (and ARC) checks with mail-auth, and DKIM signing.
//!
//! # DNS
//!
//! mail-auth asks every DNS question through optional caches it is handed in its
//! `Parameters` (`with_txt_cache`, `with_mx_cache`, `with_ipv4_cache`, `with_ipv6_cache`,
//! `with_ptr_cache`; each implements its `ResolverCache` trait). Only when a cache has no
//! answer does it query its hickory resolver, and it stores what it learns back into the
//! cache. [`Authenticator`] always hands mail-auth its own caches:
//!
//! * [`Authenticator::new`] uses the system resolver (`/etc/resolv.conf`, with the
//!   configured timeout). The caches keep answers, already parsed, until their DNS TTL
//!   runs out (at most [`CACHE_ENTRIES`] names per record type), so they are shared by all
//!   checks of all plugins.
//! * [`Authenticator::with_records`] answers only from a [`StaticDns`]: its caches hold
//!   the given records and answer every other question themselves (TXT: NXDOMAIN;
//!   A/AAAA/MX/PTR: an empty answer), so mail-auth never reaches its resolver, which
//!   has no name servers anyway. This is for tests and `wasmail plugin test --offline`.
//!   One caveat: mail-auth treats any cached A/AAAA answer, even an empty one, as
//!   "exists", so an SPF `exists:` mechanism always matches with static records.
//!
//! DNS failures (timeouts, SERVFAIL) give `temperror` results; missing records give
//! `none`. Each stage (SPF, DKIM, DMARC) is additionally bounded by three times the DNS
//! timeout.
//!
//! # ARC
//!
//! [`Authenticator::check`] also validates the ARC chain (RFC 8617) with mail-auth's `arc`
//! feature: [`AuthReport::arc`] is `None` without ARC headers, `Pass` when the newest
//! ARC-Message-Signature and every ARC-Seal verify, `Fail` for a broken chain (bad
//! instance numbers or `cv=` values, a body changed after sealing, an expired or
//! unverifiable signature, a key that is not published) and `Temperror` when a key could
//! not be fetched. The result goes into the Authentication-Results text as `arc=...`
//! (between `dkim` and `dmarc`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mail_auth::common::auth_results::AsAuthResult;
use mail_auth::common::crypto::{Algorithm, DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{DkimError, DkimSigner, DomainKeyReport};
use mail_auth::dmarc::{Dmarc, Policy};
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::hickory_resolver::{TokioResolver, system_conf};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::spf::{Macro, Spf};
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput,
    DmarcResult, DnsError, DnssecStatus, Error as MailAuthError, MX, MessageAuthenticator,
    Parameters, RecordSet, ResolverCache, SpfOutput, SpfResult, Txt,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// Most names each DNS cache of a live [`Authenticator`] keeps per record type.
pub const CACHE_ENTRIES: usize = 10_000;

/// Headers [`Authenticator::dkim_sign`] signs when a key does not list its own (those the
/// message lacks are left out). `From` is always among them, as DKIM requires.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Unsubscribe",
];

/// The outcome of one check. Mirrors the WIT enum `auth-result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// Authenticated.
    Pass,
    /// Definitely not authenticated.
    Fail,
    /// SPF: probably not authenticated (`~all`).
    Softfail,
    /// No assertion either way (SPF `?all`, malformed DKIM signature).
    Neutral,
    /// Nothing to check (no record, no signature, no client address).
    None,
    /// A temporary failure, usually DNS; a retry may succeed.
    Temperror,
    /// A permanent error such as a broken record or an unusable key.
    Permerror,
}

/// The DMARC policy of the author's domain. Mirrors the WIT enum `dmarc-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcPolicy {
    /// `p=none`: monitor only.
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
    /// No usable DMARC record.
    Unspecified,
}

/// The outcome of one DKIM-Signature header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimOutcome {
    /// The verification result.
    pub result: AuthResult,
    /// Signing domain (`d=`); empty for a signature too broken to read.
    pub domain: String,
    /// Selector (`s=`); empty for a signature too broken to read.
    pub selector: String,
}

/// Everything [`Authenticator::check`] found out. Mirrors the WIT record `auth.report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthReport {
    /// SPF result for the MAIL FROM identity (the HELO identity when MAIL FROM is empty);
    /// `None` without a client address.
    pub spf: AuthResult,
    /// The domain SPF was evaluated for.
    pub spf_domain: String,
    /// One entry per DKIM-Signature header, in header order.
    pub dkim: Vec<DkimOutcome>,
    /// DMARC result for the From domain.
    pub dmarc: AuthResult,
    /// The From header's domain (empty when there is none or several).
    pub dmarc_domain: String,
    /// The policy that applies to the From domain.
    pub dmarc_policy: DmarcPolicy,
    /// ARC chain validation: `None` (no ARC headers), `Pass`, `Fail` or `Temperror`; see
    /// the module docs.
    pub arc: AuthResult,
    /// A ready `Authentication-Results` header value (folded with CRLF + tab), starting
    /// with the configured authserv-id.
    pub authentication_results: String,
}

/// Settings of the `auth` capability (`[plugins.auth]` in the configuration).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The authserv-id at the start of Authentication-Results. Default: the host name.
    pub authserv_id: String,
    /// Timeout of one DNS query. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub dns_timeout: Duration,
    /// DKIM signing keys by key id (the id plugins pass to `dkim-sign`).
    pub dkim_keys: BTreeMap<String, DkimKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            authserv_id: hostname(),
            dns_timeout: Duration::from_secs(5),
            dkim_keys: BTreeMap::new(),
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// One DKIM signing key.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// Signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`); the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: String,
    /// PEM file with the private key: PKCS#8 (`BEGIN PRIVATE KEY`), or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) for RSA.
    pub private_key: PathBuf,
    /// Headers to sign; empty = those of [`DEFAULT_SIGNED_HEADERS`] the message has.
    /// Listed headers the message lacks are signed as absent (see
    /// [`Authenticator::dkim_sign`]).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What the glue knows about the current message.
#[derive(Debug, Clone, Copy)]
pub struct AuthInput<'a> {
    /// The SMTP client's address; `None` for local (unix-socket) clients, which skips
    /// SPF.
    pub client_ip: Option<IpAddr>,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The MAIL FROM address without angle brackets; empty for the null sender.
    pub mail_from: &'a str,
    /// The message: headers, empty line, body.
    pub raw: &'a [u8],
}

/// DNS records for [`Authenticator::with_records`], built with chained calls:
///
/// ```
/// # use wasmail::host::caps::auth::StaticDns;
/// let dns = StaticDns::new()
///     .txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all")
///     .txt("_dmarc.example.com", "v=DMARC1; p=reject")
///     .a("mail.example.com", "192.0.2.25".parse().unwrap())
///     .mx("example.com", 10, "mail.example.com");
/// ```
///
/// Names are case-insensitive; a trailing dot is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticDns {
    txt: BTreeMap<String, Vec<String>>,
    a: BTreeMap<String, Vec<Ipv4Addr>>,
    aaaa: BTreeMap<String, Vec<Ipv6Addr>>,
    mx: BTreeMap<String, Vec<(u16, String)>>,
    ptr: BTreeMap<IpAddr, Vec<String>>,
}

fn fqdn(name: &str) -> String {
    let mut name = name.trim().to_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

impl StaticDns {
    /// No records at all: every lookup finds nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a TXT record (the strings of one record joined, as DNS clients do).
    pub fn txt(mut self, name: &str, value: &str) -> Self {
        self.txt
            .entry(fqdn(name))
            .or_default()
            .push(value.to_owned());
        self
    }

    /// Adds an A record.
    pub fn a(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.a.entry(fqdn(name)).or_default().push(ip);
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, name: &str, ip: Ipv6Addr) -> Self {
        self.aaaa.entry(fqdn(name)).or_default().push(ip);
        self
    }

    /// Adds an MX record.
    pub fn mx(mut self, name: &str, preference: u16, exchange: &str) -> Self {
        self.mx
            .entry(fqdn(name))
            .or_default()
            .push((preference, fqdn(exchange)));
        self
    }

    /// Adds a PTR record for `ip`.
    pub fn ptr(mut self, ip: IpAddr, name: &str) -> Self {
        self.ptr.entry(ip).or_default().push(fqdn(name));
        self
    }

    /// Parses records in a small zone-like text format, one record per line:
    /// `name TXT text`, `name A 192.0.2.1`, `name AAAA 2001:db8::1`,
    /// `name MX 10 mail.example.com`, `192.0.2.1 PTR host.example.com`. The TXT text may
    /// be wrapped in double quotes. Empty lines and lines starting with `#` are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut dns = StaticDns::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}: {line}", number + 1);
            let Some((name, rest)) = line.split_once(char::is_whitespace) else {
                return Err(bad("expected `name TYPE value`"));
            };
            let Some((kind, rest)) = rest.trim_start().split_once(char::is_whitespace) else {
                return Err(bad("expected `name TYPE value`"));
            };
            let rest = rest.trim();
            dns = match kind.to_ascii_uppercase().as_str() {
                "TXT" => {
                    let value = rest
                        .strip_prefix('"')
                        .and_then(|r| r.strip_suffix('"'))
                        .unwrap_or(rest);
                    dns.txt(name, value)
                }
                "A" => dns.a(name, rest.parse().map_err(|_| bad("bad IPv4 address"))?),
                "AAAA" => dns.aaaa(name, rest.parse().map_err(|_| bad("bad IPv6 address"))?),
                "MX" => {
                    let (preference, exchange) = rest
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| bad("expected `MX preference host`"))?;
                    let preference = preference.parse().map_err(|_| bad("bad MX preference"))?;
                    dns.mx(name, preference, exchange.trim())
                }
                "PTR" => dns.ptr(name.parse().map_err(|_| bad("bad IP address"))?, rest),
                _ => return Err(bad("unknown record type")),
            };
        }
        Ok(dns)
    }
}

/// A DNS cache handed to mail-auth: fixed records first, then either a fixed answer for
/// everything else (static mode) or what mail-auth learned from DNS (live mode).
struct DnsCache<K, V> {
    fixed: HashMap<K, V>,
    miss: Option<V>,
    learned: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K, V> DnsCache<K, V> {
    fn live(capacity: usize) -> Self {
        DnsCache {
            fixed: HashMap::new(),
            miss: None,
            learned: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn fixed(fixed: HashMap<K, V>, miss: V) -> Self {
        DnsCache {
            fixed,
            miss: Some(miss),
            learned: Mutex::new(HashMap::new()),
            capacity: 0,
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for DnsCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.fixed.get(name) {
            return Some(value.clone());
        }
        if let Some(miss) = &self.miss {
            return Some(miss.clone());
        }
        let mut learned = self.learned.lock().ok()?;
        match learned.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                learned.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.learned.lock().ok()?.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        if self.miss.is_some() || self.capacity == 0 {
            return;
        }
        let Ok(mut learned) = self.learned.lock() else {
            return;
        };
        if learned.len() >= self.capacity {
            let now = Instant::now();
            learned.retain(|_, (_, until)| *until > now);
            if learned.len() >= self.capacity {
                learned.clear();
            }
        }
        learned.insert(key, (value, valid_until));
    }
}

/// mail-auth's parameters with our five caches.
type Params<'x, P> = Parameters<
    'x,
    P,
    DnsCache<Box<str>, Txt>,
    DnsCache<Box<str>, RecordSet<MX>>,
    DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    DnsCache<IpAddr, RecordSet<Box<str>>>,
>;

/// The five caches mail-auth takes.
struct Caches {
    txt: DnsCache<Box<str>, Txt>,
    mx: DnsCache<Box<str>, RecordSet<MX>>,
    ipv4: DnsCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: DnsCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: DnsCache<IpAddr, RecordSet<Box<str>>>,
}

fn record_set<T>(items: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: items.into(),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

/// Parses the TXT records of `name` the way mail-auth would for the record type the name
/// is used for (decided from the name and the record's `v=` tag).
fn parse_txt(name: &str, records: &[String]) -> Txt {
    let mut last = Txt::Error(MailAuthError::Dns(DnsError::InvalidRecordType));
    for record in records {
        let bytes = record.as_bytes();
        let tag = record.trim_start().to_ascii_lowercase();
        let parsed: Result<Txt, MailAuthError> = if tag.starts_with("v=spf1") {
            Spf::parse(bytes).map(Txt::from)
        } else if tag.starts_with("v=dmarc1") {
            Dmarc::parse(bytes).map(Txt::from)
        } else if name.contains("._report._domainkey.") {
            DomainKeyReport::parse(bytes).map(Txt::from)
        } else if name.contains("._domainkey.") {
            DomainKey::parse(bytes).map(Txt::from)
        } else {
            // An SPF explanation (`exp=`) string, or something we do not know.
            Macro::parse(bytes).map(Txt::from)
        };
        match parsed {
            Ok(txt) => return txt,
            Err(err) => last = Txt::Error(err),
        }
    }
    last
}

impl Caches {
    fn live() -> Self {
        Caches {
            txt: DnsCache::live(CACHE_ENTRIES),
            mx: DnsCache::live(CACHE_ENTRIES),
            ipv4: DnsCache::live(CACHE_ENTRIES),
            ipv6: DnsCache::live(CACHE_ENTRIES),
            ptr: DnsCache::live(CACHE_ENTRIES),
        }
    }

    fn fixed(records: StaticDns) -> Self {
        let nxdomain = || {
            Txt::Error(MailAuthError::Dns(DnsError::RecordNotFound(
                ResponseCode::NXDomain,
            )))
        };
        let txt = records
            .txt
            .iter()
            .map(|(name, values)| (Box::from(name.as_str()), parse_txt(name, values)))
            .collect();
        let mx = records
            .mx
            .into_iter()
            .map(|(name, mut entries)| {
                entries.sort();
                let mut grouped: Vec<MX> = Vec::new();
                for (preference, exchange) in entries {
                    match grouped.last_mut() {
                        Some(last) if last.preference == preference => {
                            let mut exchanges = std::mem::take(&mut last.exchanges).into_vec();
                            exchanges.push(exchange.into());
                            last.exchanges = exchanges.into();
                        }
                        _ => grouped.push(MX {
                            exchanges: vec![Box::from(exchange.as_str())].into(),
                            preference,
                        }),
                    }
                }
                (Box::from(name.as_str()), record_set(grouped))
            })
            .collect();
        let ipv4 = records
            .a
            .into_iter()
            .map(|(name, ips)| (Box::from(name.as_str()), record_set(ips)))
            .collect();
        let ipv6 = records
            .aaaa
            .into_iter()
            .map(|(name, ips)| (Box::from(name.as_str()), record_set(ips)))
            .collect();
        let ptr = records
            .ptr
            .into_iter()
            .map(|(ip, names)| {
                let names: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
                (ip, record_set(names))
            })
            .collect();
        Caches {
            txt: DnsCache::fixed(txt, nxdomain()),
            mx: DnsCache::fixed(mx, record_set(Vec::new())),
            ipv4: DnsCache::fixed(ipv4, record_set(Vec::new())),
            ipv6: DnsCache::fixed(ipv6, record_set(Vec::new())),
            ptr: DnsCache::fixed(ptr, record_set(Vec::new())),
        }
    }
}

/// A loaded DKIM signing key.
struct SigningKeyEntry {
    config: DkimKeyConfig,
    key: DkimKey,
}

/// Lets a shared key sign without being moved into mail-auth's signer.
struct KeyRef<'a>(&'a DkimKey);

impl SigningKey for KeyRef<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// Runs the checks and signs messages. Build it once and share it through an `Arc`.
pub struct Authenticator {
    resolver: MessageAuthenticator,
    dns: Caches,
    authserv_id: String,
    dns_timeout: Duration,
    keys: BTreeMap<String, SigningKeyEntry>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("authserv_id", &self.authserv_id)
            .field("dns_timeout", &self.dns_timeout)
            .field("static_dns", &self.dns.txt.miss.is_some())
            .field("dkim_keys", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Uses the system resolver configuration (`/etc/resolv.conf`) with the configured
    /// timeout, and loads every DKIM key (the error names the key id and file of a key
    /// that cannot be used).
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        let (resolver_config, mut options) =
            system_conf::read_system_conf().context("reading the system DNS configuration")?;
        options.timeout = config.dns_timeout;
        options.attempts = 2;
        Self::build(config, resolver_config, options, Caches::live())
    }

    /// Answers DNS questions only from `records` (see the module docs); nothing goes to
    /// the network. Loads DKIM keys like [`Authenticator::new`].
    pub fn with_records(config: &AuthConfig, records: StaticDns) -> anyhow::Result<Self> {
        Self::build(
            config,
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            ResolverOpts::default(),
            Caches::fixed(records),
        )
    }

    fn build(
        config: &AuthConfig,
        resolver_config: ResolverConfig,
        options: ResolverOpts,
        dns: Caches,
    ) -> anyhow::Result<Self> {
        let resolver =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default())
                .with_options(options)
                .build()
                .context("setting up the DNS resolver")?;
        let keys = config
            .dkim_keys
            .iter()
            .map(|(id, key)| Ok((id.clone(), load_key(id, key)?)))
            .collect::<anyhow::Result<_>>()?;
        let authserv_id = match config.authserv_id.trim() {
            "" => hostname(),
            id => id.to_owned(),
        };
        Ok(Authenticator {
            resolver: MessageAuthenticator(resolver),
            dns,
            authserv_id,
            dns_timeout: config.dns_timeout,
            keys,
        })
    }

    fn params<P>(&self, params: P) -> Params<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.dns.txt)
            .with_mx_cache(&self.dns.mx)
            .with_ipv4_cache(&self.dns.ipv4)
            .with_ipv6_cache(&self.dns.ipv6)
            .with_ptr_cache(&self.dns.ptr)
    }

    /// Checks SPF (when the client address is known), every DKIM signature and DMARC, and
    /// writes the Authentication-Results value. Never fails: DNS trouble shows up as
    /// `Temperror` results, and a message mail-auth cannot parse has no DKIM outcomes.
    pub async fn check(&self, input: &AuthInput<'_>) -> AuthReport {
        let stage_timeout = self.dns_timeout.saturating_mul(3);
        let helo = input.helo.trim();
        let helo = helo
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(helo);
        let mail_from = input.mail_from.trim();
        let mail_from = mail_from
            .strip_prefix('<')
            .and_then(|m| m.strip_suffix('>'))
            .unwrap_or(mail_from);
        let spf_domain = match mail_from.rsplit_once('@') {
            Some((_, domain)) if !domain.is_empty() => domain,
            _ => helo,
        }
        .to_ascii_lowercase();
        let mut results = String::new();

        // SPF
        let spf_output = match input.client_ip {
            Some(ip) => {
                let params = if mail_from.is_empty() {
                    SpfParameters::verify_ehlo(ip, helo, &self.authserv_id)
                } else {
                    SpfParameters::verify_mail_from(ip, helo, &self.authserv_id, mail_from)
                };
                let output = tokio::time::timeout(
                    stage_timeout,
                    self.resolver.verify_spf(self.params(params)),
                )
                .await
                .unwrap_or_else(|_| {
                    SpfOutput::new(spf_domain.clone()).with_result(SpfResult::TempError)
                });
                let ar = AuthenticationResults::new("");
                let ar = if mail_from.is_empty() {
                    ar.with_spf_ehlo_result(&output, ip, helo)
                } else {
                    ar.with_spf_mailfrom_result(&output, ip, mail_from, helo)
                };
                results.push_str(&ar.to_string());
                output
            }
            None => {
                results.push_str(";\r\n\tspf=none (no client address)");
                SpfOutput::new(spf_domain.clone()).with_result(SpfResult::None)
            }
        };
        let spf = match spf_output.result() {
            SpfResult::Pass => AuthResult::Pass,
            SpfResult::Fail => AuthResult::Fail,
            SpfResult::SoftFail => AuthResult::Softfail,
            SpfResult::Neutral => AuthResult::Neutral,
            SpfResult::TempError => AuthResult::Temperror,
            SpfResult::PermError => AuthResult::Permerror,
            SpfResult::None => AuthResult::None,
        };

        let mut report = AuthReport {
            spf,
            spf_domain: spf_domain.clone(),
            dkim: Vec::new(),
            dmarc: AuthResult::None,
            dmarc_domain: String::new(),
            dmarc_policy: DmarcPolicy::Unspecified,
            arc: AuthResult::None,
            authentication_results: String::new(),
        };

        let Some(message) = AuthenticatedMessage::parse(input.raw) else {
            results.push_str(";\r\n\tdkim=none;\r\n\tarc=none;\r\n\tdmarc=none");
            report.authentication_results = format!("{}{results}", self.authserv_id);
            return report;
        };

        // DKIM
        let dkim_outputs: Vec<DkimOutput<'_>> = match tokio::time::timeout(
            stage_timeout,
            self.resolver.verify_dkim(self.params(&message)),
        )
        .await
        {
            Ok(outputs) => outputs,
            Err(_) => message
                .dkim_headers
                .iter()
                .map(|_| {
                    DkimOutput::temp_err(MailAuthError::Dns(DnsError::Resolver(
                        "DKIM key lookup timed out".into(),
                    )))
                })
                .collect(),
        };
        // mail-auth calls a body hash mismatch "neutral"; like most verifiers we call it
        // "fail" (the body was changed after signing).
        let dkim_outputs: Vec<DkimOutput<'_>> = dkim_outputs
            .into_iter()
            .map(|output| {
                let DkimResult::Neutral(err @ MailAuthError::Dkim(DkimError::FailedBodyHashMatch)) =
                    output.result()
                else {
                    return output;
                };
                // The same signature, borrowed from the message rather than the output.
                let signature = output.signature().and_then(|signature| {
                    message
                        .dkim_headers
                        .iter()
                        .map(|header| &header.header)
                        .find(|candidate| std::ptr::eq(*candidate, signature))
                });
                match signature {
                    Some(signature) => DkimOutput::fail(err.clone()).with_signature(signature),
                    None => output,
                }
            })
            .collect();
        report.dkim = dkim_outputs
            .iter()
            .map(|output| DkimOutcome {
                result: match output.result() {
                    DkimResult::Pass => AuthResult::Pass,
                    DkimResult::Neutral(_) => AuthResult::Neutral,
                    DkimResult::Fail(_) => AuthResult::Fail,
                    DkimResult::PermError(_) => AuthResult::Permerror,
                    DkimResult::TempError(_) => AuthResult::Temperror,
                    DkimResult::None => AuthResult::None,
                },
                domain: output.signature().map(|s| s.d.clone()).unwrap_or_default(),
                selector: output.signature().map(|s| s.s.clone()).unwrap_or_default(),
            })
            .collect();
        if dkim_outputs.is_empty() {
            results.push_str(";\r\n\tdkim=none");
        } else {
            let from = message.from();
            results.push_str(
                &AuthenticationResults::new("")
                    .with_dkim_results(&dkim_outputs, from)
                    .to_string(),
            );
        }

        // ARC
        let (arc, arc_text) = match tokio::time::timeout(
            stage_timeout,
            self.resolver.verify_arc(self.params(&message)),
        )
        .await
        {
            Ok(output) => arc_outcome(&output),
            Err(_) => (
                AuthResult::Temperror,
                DkimResult::TempError(MailAuthError::Dns(DnsError::Resolver(
                    "ARC key lookup timed out".into(),
                ))),
            ),
        };
        report.arc = arc;
        results.push_str(";\r\n\tarc=");
        arc_text.as_auth_result(&mut results);
        if let (Some(ip), AuthResult::Pass | AuthResult::Fail) = (input.client_ip, arc) {
            results.push_str(" smtp.remote-ip=");
            match ip {
                IpAddr::V4(ip) => results.push_str(&ip.to_string()),
                IpAddr::V6(ip) => results.push_str(&format!("\"{ip}\"")),
            }
        }

        // DMARC
        let from_domains: Vec<String> = message
            .from
            .iter()
            .filter_map(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .collect();
        let dmarc_output = tokio::time::timeout(
            stage_timeout,
            self.resolver.verify_dmarc(self.params(
                mail_auth::dmarc::verify::DmarcParameters::new(
                    &message,
                    &dkim_outputs,
                    &spf_domain,
                    &spf_output,
                ),
            )),
        )
        .await
        .ok();
        match dmarc_output {
            Some(output) => {
                report.dmarc = match output.result() {
                    DmarcResult::Pass => AuthResult::Pass,
                    DmarcResult::Fail(_) => AuthResult::Fail,
                    DmarcResult::TempError(_) => AuthResult::Temperror,
                    DmarcResult::PermError(_) => AuthResult::Permerror,
                    DmarcResult::None => AuthResult::None,
                };
                report.dmarc_domain = if output.domain().is_empty() {
                    from_domains.first().cloned().unwrap_or_default()
                } else {
                    output.domain().to_owned()
                };
                report.dmarc_policy = dmarc_policy(&output);
                if output.domain().is_empty() {
                    results.push_str(";\r\n\tdmarc=none");
                } else {
                    results.push_str(
                        &AuthenticationResults::new("")
                            .with_dmarc_result(&output)
                            .to_string(),
                    );
                }
            }
            None => {
                report.dmarc = AuthResult::Temperror;
                report.dmarc_domain = from_domains.first().cloned().unwrap_or_default();
                results.push_str(";\r\n\tdmarc=temperror (timeout)");
            }
        }

        report.authentication_results = format!("{}{results}", self.authserv_id);
        report
    }

    /// Signs `raw` with the DKIM key `key_id` and returns the DKIM-Signature header
    /// value (without `DKIM-Signature: `, folded with CRLF + tab, no final CRLF), using
    /// relaxed/relaxed canonicalization.
    ///
    /// With the default header list only the headers the message has are signed. A list
    /// configured for the key is used as given: listed headers the message lacks are
    /// signed as absent (mail-auth's behaviour), so nobody can add them later without
    /// breaking the signature. Fails for an unknown key id or a message without any of
    /// the headers to sign.
    pub fn dkim_sign(&self, key_id: &str, raw: &[u8]) -> Result<String, String> {
        let entry = self
            .keys
            .get(key_id)
            .ok_or_else(|| format!("unknown DKIM key {key_id:?}"))?;
        let headers: Vec<String> = if entry.config.headers.is_empty() {
            let present = super::message::split_headers(raw);
            DEFAULT_SIGNED_HEADERS
                .iter()
                .filter(|h| {
                    present
                        .iter()
                        .any(|(name, _)| name.eq_ignore_ascii_case(h.as_bytes()))
                })
                .map(|h| (*h).to_owned())
                .collect()
        } else {
            entry.config.headers.clone()
        };
        let signature = DkimSigner::from_key(KeyRef(&entry.key))
            .domain(entry.config.domain.clone())
            .selector(entry.config.selector.clone())
            .headers(headers)
            .sign(raw)
            .map_err(|e| format!("DKIM signing with key {key_id:?} failed: {e}"))?;
        let header = signature.to_header();
        let value = header
            .strip_prefix("DKIM-Signature: ")
            .unwrap_or(&header)
            .trim_end_matches("\r\n");
        Ok(value.to_owned())
    }

    /// The DNS TXT record to publish at `<selector>._domainkey.<domain>` for the DKIM key
    /// `key_id` (`v=DKIM1; k=rsa; p=...`), or `None` for an unknown key id.
    pub fn dkim_public_record(&self, key_id: &str) -> Option<String> {
        let entry = self.keys.get(key_id)?;
        Some(match &entry.key {
            DkimKey::Rsa(key) => {
                format!("v=DKIM1; k=rsa; p={}", base64(&rsa_spki(&key.public_key())))
            }
            DkimKey::Ed25519(key) => {
                format!("v=DKIM1; k=ed25519; p={}", base64(&key.public_key()))
            }
        })
    }

    /// The DNS name the public key of `key_id` is published at, or `None` for an unknown
    /// key id.
    pub fn dkim_record_name(&self, key_id: &str) -> Option<String> {
        let entry = self.keys.get(key_id)?;
        Some(format!(
            "{}._domainkey.{}",
            entry.config.selector, entry.config.domain
        ))
    }
}

/// Maps mail-auth's ARC verdict to the RFC 8617 results (`none`, `pass`, `fail`, plus
/// `temperror` for DNS trouble) and the result written into Authentication-Results.
/// mail-auth reports a body changed after sealing, an expired signature or malformed ARC
/// headers as "neutral" and an unpublished key as "permerror"; for ARC all of them mean
/// the chain does not validate.
fn arc_outcome(output: &ArcOutput<'_>) -> (AuthResult, DkimResult) {
    match output.result() {
        DkimResult::Pass => (AuthResult::Pass, DkimResult::Pass),
        DkimResult::None => (AuthResult::None, DkimResult::None),
        DkimResult::TempError(err) => (AuthResult::Temperror, DkimResult::TempError(err.clone())),
        DkimResult::Fail(err) | DkimResult::Neutral(err) | DkimResult::PermError(err) => {
            (AuthResult::Fail, DkimResult::Fail(err.clone()))
        }
    }
}

fn dmarc_policy(output: &DmarcOutput) -> DmarcPolicy {
    if output.dmarc_record().is_none() {
        return DmarcPolicy::Unspecified;
    }
    match output.policy() {
        Policy::None => DmarcPolicy::None,
        Policy::Quarantine => DmarcPolicy::Quarantine,
        Policy::Reject => DmarcPolicy::Reject,
        Policy::Unspecified => DmarcPolicy::Unspecified,
    }
}

fn load_key(id: &str, config: &DkimKeyConfig) -> anyhow::Result<SigningKeyEntry> {
    let file = config.private_key.display();
    let pem = std::fs::read(&config.private_key)
        .with_context(|| format!("DKIM key {id:?}: reading {file}"))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| anyhow::anyhow!("DKIM key {id:?}: no private key in {file}: {e}"))?;
    let key = match config.algorithm.to_ascii_lowercase().as_str() {
        "rsa-sha256" => DkimKey::Rsa(
            RsaKey::<Sha256>::from_key_der(der)
                .map_err(|e| anyhow::anyhow!("DKIM key {id:?}: bad RSA key in {file}: {e}"))?,
        ),
        "ed25519-sha256" => {
            let PrivateKeyDer::Pkcs8(der) = der else {
                anyhow::bail!("DKIM key {id:?}: {file} must hold a PKCS#8 Ed25519 key");
            };
            DkimKey::Ed25519(
                Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()).map_err(
                    |e| anyhow::anyhow!("DKIM key {id:?}: bad Ed25519 key in {file}: {e}"),
                )?,
            )
        }
        other => anyhow::bail!(
            "DKIM key {id:?}: unknown algorithm {other:?} (use rsa-sha256 or ed25519-sha256)"
        ),
    };
    anyhow::ensure!(
        !config.domain.trim().is_empty() && !config.selector.trim().is_empty(),
        "DKIM key {id:?}: domain and selector must not be empty"
    );
    Ok(SigningKeyEntry {
        config: config.clone(),
        key,
    })
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo, the form DKIM records carry.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der_len(len: usize, out: &mut Vec<u8>) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    // SEQUENCE { OID 1.2.840.113549.1.1.1 (rsaEncryption), NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0x03];
    der_len(pkcs1.len() + 1, &mut bit_string);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(pkcs1);
    let mut out = vec![0x30];
    der_len(ALGORITHM.len() + bit_string.len(), &mut out);
    out.extend_from_slice(ALGORITHM);
    out.extend(bit_string);
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/caps")
            .join(name)
    }

    fn key(domain: &str, selector: &str, algorithm: &str, file: &str) -> DkimKeyConfig {
        DkimKeyConfig {
            domain: domain.into(),
            selector: selector.into(),
            algorithm: algorithm.into(),
            private_key: data(file),
            headers: Vec::new(),
        }
    }

    fn config() -> AuthConfig {
        let mut keys = BTreeMap::new();
        keys.insert(
            "rsa".to_owned(),
            key("example.org", "rsa2025", "rsa-sha256", "dkim-rsa-pkcs8.pem"),
        );
        keys.insert(
            "rsa1".to_owned(),
            key("example.org", "legacy", "rsa-sha256", "dkim-rsa-pkcs1.pem"),
        );
        keys.insert(
            "ed".to_owned(),
            key(
                "example.org",
                "ed2025",
                "ed25519-sha256",
                "dkim-ed25519.pem",
            ),
        );
        keys.insert(
            "other".to_owned(),
            key(
                "mailer.example.net",
                "s1",
                "ed25519-sha256",
                "dkim-ed25519.pem",
            ),
        );
        AuthConfig {
            authserv_id: "mx.example.com".into(),
            dns_timeout: Duration::from_secs(2),
            dkim_keys: keys,
        }
    }

    /// The public keys of all test keys, published through DNS.
    fn published(base: StaticDns) -> StaticDns {
        let signer = Authenticator::with_records(&config(), StaticDns::new()).unwrap();
        let mut dns = base;
        for id in ["rsa", "rsa1", "ed", "other"] {
            dns = dns.txt(
                &signer.dkim_record_name(id).unwrap(),
                &signer.dkim_public_record(id).unwrap(),
            );
        }
        dns
    }

    const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
        To: bob@example.com\r\n\
        Subject: Quarterly numbers\r\n\
        Date: Tue, 14 Jan 2025 11:00:00 +0100\r\n\
        Message-ID: <q1-2025@example.org>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        \r\n\
        Hi Bob,\r\n\
        \r\n\
        the numbers are attached.\r\n";

    fn signed(auth: &Authenticator, key_ids: &[&str], raw: &str) -> String {
        let mut out = String::new();
        for id in key_ids {
            let value = auth.dkim_sign(id, raw.as_bytes()).unwrap();
            out.push_str("DKIM-Signature: ");
            out.push_str(&value);
            out.push_str("\r\n");
        }
        out.push_str(raw);
        out
    }

    fn input(raw: &str) -> AuthInput<'_> {
        AuthInput {
            client_ip: Some("192.0.2.25".parse().unwrap()),
            helo: "mail.example.org",
            mail_from: "alice@example.org",
            raw: raw.as_bytes(),
        }
    }

    fn example_org() -> StaticDns {
        published(
            StaticDns::new()
                .txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
                .txt(
                    "_dmarc.example.org",
                    "v=DMARC1; p=reject; rua=mailto:d@example.org",
                ),
        )
    }

    #[tokio::test]
    async fn signed_message_passes_everything() {
        let auth = Authenticator::with_records(&config(), example_org()).unwrap();
        let raw = signed(&auth, &["rsa", "ed", "rsa1"], MESSAGE);
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.spf, AuthResult::Pass, "{report:#?}");
        assert_eq!(report.spf_domain, "example.org");
        assert_eq!(
            report.dkim,
            vec![
                DkimOutcome {
                    result: AuthResult::Pass,
                    domain: "example.org".into(),
                    selector: "rsa2025".into()
                },
                DkimOutcome {
                    result: AuthResult::Pass,
                    domain: "example.org".into(),
                    selector: "ed2025".into()
                },
                DkimOutcome {
                    result: AuthResult::Pass,
                    domain: "example.org".into(),
                    selector: "legacy".into()
                },
            ]
        );
        assert_eq!(report.dmarc, AuthResult::Pass);
        assert_eq!(report.dmarc_domain, "example.org");
        assert_eq!(report.dmarc_policy, DmarcPolicy::Reject);
        assert_eq!(report.arc, AuthResult::None);
        let ar = &report.authentication_results;
        assert!(ar.starts_with("mx.example.com;"), "{ar}");
        assert!(ar.contains("spf=pass"), "{ar}");
        assert!(ar.contains("smtp.mailfrom=alice@example.org"), "{ar}");
        assert!(ar.contains("dkim=pass header.d=example.org"), "{ar}");
        assert!(ar.contains("dmarc=pass"), "{ar}");
        assert!(ar.contains("header.from=example.org"), "{ar}");
    }

    #[tokio::test]
    async fn tampered_body_fails_dkim() {
        let auth = Authenticator::with_records(&config(), example_org()).unwrap();
        let raw = signed(&auth, &["ed"], MESSAGE).replace("attached", "ATTACHED");
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.dkim.len(), 1);
        assert_eq!(report.dkim[0].result, AuthResult::Fail);
        assert_eq!(report.dkim[0].selector, "ed2025");
        // SPF still passes and is aligned, so DMARC passes.
        assert_eq!(report.dmarc, AuthResult::Pass);
        assert!(report.authentication_results.contains("dkim=fail"));

        // A changed signed header breaks the signature too.
        let raw = signed(&auth, &["rsa"], MESSAGE).replace("Quarterly", "Yearly");
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.dkim[0].result, AuthResult::Fail);
    }

    #[tokio::test]
    async fn dmarc_reject_with_failing_spf_and_dkim() {
        let auth = Authenticator::with_records(&config(), example_org()).unwrap();
        let raw = signed(&auth, &["ed"], MESSAGE).replace("the numbers", "the n-u-m-b-e-r-s");
        let report = auth
            .check(&AuthInput {
                client_ip: Some("203.0.113.9".parse().unwrap()),
                ..input(&raw)
            })
            .await;
        assert_eq!(report.spf, AuthResult::Fail);
        assert_eq!(report.dkim[0].result, AuthResult::Fail);
        assert_eq!(report.dmarc, AuthResult::Fail);
        assert_eq!(report.dmarc_policy, DmarcPolicy::Reject);
        assert_eq!(report.dmarc_domain, "example.org");
        let ar = &report.authentication_results;
        assert!(ar.contains("spf=fail"), "{ar}");
        assert!(ar.contains("dmarc=fail"), "{ar}");
        assert!(ar.contains("policy.dmarc=reject"), "{ar}");
    }

    #[tokio::test]
    async fn unaligned_signature_does_not_satisfy_dmarc() {
        let dns = published(
            StaticDns::new()
                .txt("example.org", "v=spf1 -all")
                .txt("_dmarc.example.org", "v=DMARC1; p=quarantine"),
        );
        let auth = Authenticator::with_records(&config(), dns).unwrap();
        let raw = signed(&auth, &["other"], MESSAGE);
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.dkim[0].result, AuthResult::Pass);
        assert_eq!(report.dkim[0].domain, "mailer.example.net");
        assert_eq!(report.spf, AuthResult::Fail);
        assert_eq!(report.dmarc, AuthResult::Fail);
        assert_eq!(report.dmarc_policy, DmarcPolicy::Quarantine);
    }

    #[tokio::test]
    async fn no_records_gives_none() {
        let auth = Authenticator::with_records(&config(), StaticDns::new()).unwrap();
        let report = auth.check(&input(MESSAGE)).await;
        assert_eq!(report.spf, AuthResult::None);
        assert!(report.dkim.is_empty());
        assert_eq!(report.dmarc, AuthResult::None);
        assert_eq!(report.dmarc_domain, "example.org");
        assert_eq!(report.dmarc_policy, DmarcPolicy::Unspecified);
        let ar = &report.authentication_results;
        assert!(ar.contains("spf=none"), "{ar}");
        assert!(ar.contains("dkim=none"), "{ar}");
        assert!(ar.contains("dmarc=none"), "{ar}");

        // A signature whose key is not published.
        let raw = signed(&auth, &["ed"], MESSAGE);
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.dkim.len(), 1);
        assert_ne!(report.dkim[0].result, AuthResult::Pass);
    }

    #[tokio::test]
    async fn spf_variants() {
        let dns = StaticDns::new()
            .txt("soft.example", "v=spf1 ~all")
            .txt("neutral.example", "v=spf1 ?all")
            .txt("broken.example", "v=spf1 ip4:not-an-ip -all")
            .txt("mx.example", "v=spf1 mx a:relay.mx.example -all")
            .mx("mx.example", 10, "mail.mx.example")
            .a("mail.mx.example", "198.51.100.7".parse().unwrap())
            .a("relay.mx.example", "198.51.100.8".parse().unwrap())
            .txt("helo.example", "v=spf1 ip4:192.0.2.25 -all");
        let auth = Authenticator::with_records(&config(), dns).unwrap();
        let check = |ip: &str, helo: &'static str, mail_from: &'static str| {
            let ip = ip.parse().unwrap();
            let auth = &auth;
            async move {
                auth.check(&AuthInput {
                    client_ip: Some(ip),
                    helo,
                    mail_from,
                    raw: MESSAGE.as_bytes(),
                })
                .await
            }
        };
        assert_eq!(
            check("192.0.2.1", "h", "a@soft.example").await.spf,
            AuthResult::Softfail
        );
        assert_eq!(
            check("192.0.2.1", "h", "a@neutral.example").await.spf,
            AuthResult::Neutral
        );
        assert_eq!(
            check("192.0.2.1", "h", "a@broken.example").await.spf,
            AuthResult::Permerror
        );
        assert_eq!(
            check("198.51.100.7", "h", "a@mx.example").await.spf,
            AuthResult::Pass
        );
        assert_eq!(
            check("198.51.100.8", "h", "a@mx.example").await.spf,
            AuthResult::Pass
        );
        assert_eq!(
            check("198.51.100.9", "h", "a@mx.example").await.spf,
            AuthResult::Fail
        );
        // Null sender: the HELO identity is checked.
        let report = check("192.0.2.25", "helo.example", "").await;
        assert_eq!(report.spf, AuthResult::Pass);
        assert_eq!(report.spf_domain, "helo.example");
        assert!(
            report
                .authentication_results
                .contains("smtp.helo=helo.example")
        );
        // Angle brackets are tolerated.
        assert_eq!(
            check("192.0.2.1", "h", "<a@soft.example>").await.spf,
            AuthResult::Softfail
        );
    }

    #[tokio::test]
    async fn local_client_skips_spf() {
        let auth = Authenticator::with_records(&config(), example_org()).unwrap();
        let raw = signed(&auth, &["ed"], MESSAGE);
        let report = auth
            .check(&AuthInput {
                client_ip: None,
                ..input(&raw)
            })
            .await;
        assert_eq!(report.spf, AuthResult::None);
        assert_eq!(report.dkim[0].result, AuthResult::Pass);
        assert_eq!(report.dmarc, AuthResult::Pass, "DKIM alone is aligned");
        assert!(report.authentication_results.contains("spf=none"));
    }

    #[tokio::test]
    async fn garbage_and_empty_input() {
        let auth = Authenticator::with_records(&config(), example_org()).unwrap();
        for raw in [
            &b""[..],
            b"\r\n",
            b"\xff\xfe garbage \x00\x01",
            b"DKIM-Signature: v=1; a=bogus\r\nFrom: a@example.org\r\n\r\nx",
            b"From: a@example.org, b@example.net\r\n\r\nmultiple from domains",
        ] {
            let report = auth
                .check(&AuthInput {
                    client_ip: Some("192.0.2.25".parse().unwrap()),
                    helo: "",
                    mail_from: "",
                    raw,
                })
                .await;
            assert!(report.authentication_results.starts_with("mx.example.com"));
        }
        let report = auth
            .check(&AuthInput {
                client_ip: Some("192.0.2.25".parse().unwrap()),
                helo: "h",
                mail_from: "x@example.org",
                raw: b"DKIM-Signature: v=1; a=bogus\r\nFrom: a@example.org\r\n\r\nx",
            })
            .await;
        assert_eq!(report.dkim.len(), 1);
        assert!(
            matches!(
                report.dkim[0].result,
                AuthResult::Neutral | AuthResult::Permerror
            ),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_dns_gives_temperror() {
        // A live resolver whose only name server does not answer.
        let config = AuthConfig {
            dns_timeout: Duration::from_millis(200),
            ..config()
        };
        let server = mail_auth::hickory_resolver::config::NameServerConfig::udp(
            "127.0.0.1".parse().unwrap(),
        );
        let mut server = server;
        for connection in &mut server.connections {
            connection.port = 9;
        }
        let mut options = ResolverOpts::default();
        options.timeout = config.dns_timeout;
        options.attempts = 1;
        let auth = Authenticator::build(
            &config,
            ResolverConfig::from_parts(None, Vec::new(), vec![server]),
            options,
            Caches::live(),
        )
        .unwrap();
        let signer = Authenticator::with_records(&config, StaticDns::new()).unwrap();
        let raw = signed(&signer, &["ed"], MESSAGE);
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.spf, AuthResult::Temperror, "{report:#?}");
        assert_eq!(report.dkim[0].result, AuthResult::Temperror);
        assert_eq!(report.dmarc, AuthResult::Temperror);
    }

    #[test]
    fn check_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let auth = Authenticator::with_records(&config(), StaticDns::new()).unwrap();
        let raw = MESSAGE.as_bytes();
        let input = AuthInput {
            client_ip: None,
            helo: "h",
            mail_from: "",
            raw,
        };
        assert_send(&auth.check(&input));
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Authenticator>();
    }

    #[test]
    fn dkim_sign_output_shape() {
        let auth = Authenticator::with_records(&config(), StaticDns::new()).unwrap();
        let value = auth.dkim_sign("rsa", MESSAGE.as_bytes()).unwrap();
        assert!(
            value.starts_with("v=1; a=rsa-sha256; s=rsa2025; d=example.org; c=relaxed/relaxed;"),
            "{value}"
        );
        assert!(!value.starts_with("DKIM-Signature"));
        assert!(!value.ends_with("\r\n"));
        assert!(value.contains("\r\n\t"), "folded: {value}");
        let h = value.split("h=").nth(1).unwrap().split(';').next().unwrap();
        let h = h.replace("\r\n\t", "");
        for name in [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
        ] {
            assert!(
                h.split(':').any(|x| x.eq_ignore_ascii_case(name)),
                "{name} in {h}"
            );
        }
        assert!(
            !h.to_ascii_lowercase().contains("references"),
            "absent headers are not signed"
        );
        assert!(
            auth.dkim_sign("nope", MESSAGE.as_bytes())
                .unwrap_err()
                .contains("unknown DKIM key")
        );
        assert!(auth.dkim_sign("ed", b"\r\nno headers").is_err());
        assert_eq!(
            auth.dkim_public_record("ed").unwrap().len(),
            "v=DKIM1; k=ed25519; p=".len() + 44
        );
        assert!(
            auth.dkim_public_record("rsa")
                .unwrap()
                .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN")
        );
        assert_eq!(
            auth.dkim_record_name("rsa").unwrap(),
            "rsa2025._domainkey.example.org"
        );
    }

    #[test]
    fn custom_signed_headers() {
        let mut config = config();
        config.dkim_keys.get_mut("ed").unwrap().headers = vec!["From".into(), "Subject".into()];
        let auth = Authenticator::with_records(&config, StaticDns::new()).unwrap();
        let value = auth.dkim_sign("ed", MESSAGE.as_bytes()).unwrap();
        let h = value.split("h=").nth(1).unwrap().split(';').next().unwrap();
        let mut h: Vec<&str> = h.split(':').collect();
        h.sort_unstable();
        assert_eq!(h, ["From", "Subject"], "{value}");
    }

    #[test]
    fn key_errors_name_the_key_and_file() {
        let mut bad = config();
        bad.dkim_keys.insert(
            "broken".into(),
            key("example.org", "s", "rsa-sha256", "does-not-exist.pem"),
        );
        let err = format!(
            "{:#}",
            Authenticator::with_records(&bad, StaticDns::new()).unwrap_err()
        );
        assert!(
            err.contains("\"broken\"") && err.contains("does-not-exist.pem"),
            "{err}"
        );

        let mut bad = config();
        bad.dkim_keys.insert(
            "wrong-type".into(),
            key("example.org", "s", "rsa-sha256", "dkim-ed25519.pem"),
        );
        let err = format!(
            "{:#}",
            Authenticator::with_records(&bad, StaticDns::new()).unwrap_err()
        );
        assert!(
            err.contains("\"wrong-type\"") && err.contains("dkim-ed25519.pem"),
            "{err}"
        );

        let mut bad = config();
        bad.dkim_keys.insert(
            "algo".into(),
            key("example.org", "s", "rsa-sha1", "dkim-rsa-pkcs8.pem"),
        );
        let err = format!(
            "{:#}",
            Authenticator::with_records(&bad, StaticDns::new()).unwrap_err()
        );
        assert!(
            err.contains("\"algo\"") && err.contains("unknown algorithm"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem file").unwrap();
        let mut bad = config();
        bad.dkim_keys.insert(
            "junk".into(),
            DkimKeyConfig {
                private_key: junk,
                ..key("example.org", "s", "ed25519-sha256", "x")
            },
        );
        let err = format!(
            "{:#}",
            Authenticator::with_records(&bad, StaticDns::new()).unwrap_err()
        );
        assert!(
            err.contains("\"junk\"") && err.contains("junk.pem"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn generated_key_round_trip() {
        // A key generated on the fly, written as PEM, loaded, used and verified.
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        pem.push_str(&base64(&der));
        pem.push_str("\n-----END PRIVATE KEY-----\n");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fresh.pem");
        std::fs::write(&file, pem).unwrap();
        let mut config = config();
        config.dkim_keys = BTreeMap::from([(
            "fresh".to_owned(),
            DkimKeyConfig {
                private_key: file,
                ..key("example.org", "fresh", "ed25519-sha256", "x")
            },
        )]);
        let signer = Authenticator::with_records(&config, StaticDns::new()).unwrap();
        let dns = StaticDns::new().txt(
            "fresh._domainkey.example.org",
            &signer.dkim_public_record("fresh").unwrap(),
        );
        let verifier = Authenticator::with_records(&config, dns).unwrap();
        let raw = signed(&signer, &["fresh"], MESSAGE);
        let report = verifier.check(&input(&raw)).await;
        assert_eq!(report.dkim[0].result, AuthResult::Pass, "{report:#?}");
    }

    /// The test config plus an ARC sealing key for `lists.example.net`.
    fn arc_config() -> AuthConfig {
        let mut config = config();
        config.dkim_keys.insert(
            "arc".to_owned(),
            key(
                "lists.example.net",
                "arc2025",
                "ed25519-sha256",
                "dkim-ed25519.pem",
            ),
        );
        config.dkim_keys.insert(
            "arc-rsa".to_owned(),
            key(
                "relay.example.com",
                "arcrsa",
                "rsa-sha256",
                "dkim-rsa-pkcs8.pem",
            ),
        );
        config
    }

    /// `example_org()` plus the ARC sealing keys.
    fn arc_dns() -> StaticDns {
        let signer = Authenticator::with_records(&arc_config(), StaticDns::new()).unwrap();
        let mut dns = example_org();
        for id in ["arc", "arc-rsa"] {
            dns = dns.txt(
                &signer.dkim_record_name(id).unwrap(),
                &signer.dkim_public_record(id).unwrap(),
            );
        }
        dns
    }

    /// Verifies `raw` as an intermediary would and adds an ARC set sealed with `key_id`
    /// (mail-auth's sealer), the way a mailing list or forwarder does.
    async fn arc_seal(auth: &Authenticator, key_id: &str, raw: &str) -> String {
        let entry = &auth.keys[key_id];
        let message = AuthenticatedMessage::parse(raw.as_bytes()).unwrap();
        let dkim = auth.resolver.verify_dkim(auth.params(&message)).await;
        let arc = auth.resolver.verify_arc(auth.params(&message)).await;
        assert!(
            matches!(arc.result(), DkimResult::Pass | DkimResult::None),
            "{:?}",
            arc.result()
        );
        let results = AuthenticationResults::new(&entry.config.domain)
            .with_dkim_results(&dkim, "example.org");
        let set = mail_auth::arc::ArcSealer::from_key(KeyRef(&entry.key))
            .domain(entry.config.domain.clone())
            .selector(entry.config.selector.clone())
            .headers(["From", "To", "Subject", "Date", "DKIM-Signature"])
            .seal(&message, &results, &arc)
            .unwrap();
        format!("{}{}{raw}", set.to_header(), results.to_header())
    }

    #[tokio::test]
    async fn arc_none_without_arc_headers() {
        let auth = Authenticator::with_records(&arc_config(), arc_dns()).unwrap();
        let raw = signed(&auth, &["ed"], MESSAGE);
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.arc, AuthResult::None);
        let ar = &report.authentication_results;
        assert!(ar.contains("arc=none"), "{ar}");
        // The order is spf, dkim, arc, dmarc.
        let (spf, dkim, arc, dmarc) = (
            ar.find("spf=").unwrap(),
            ar.find("dkim=").unwrap(),
            ar.find("arc=").unwrap(),
            ar.find("dmarc=").unwrap(),
        );
        assert!(spf < dkim && dkim < arc && arc < dmarc, "{ar}");
        // An unparsable message still gets an arc result.
        let report = auth.check(&input("")).await;
        assert_eq!(report.arc, AuthResult::None);
        assert!(report.authentication_results.contains("arc=none"));
    }

    #[tokio::test]
    async fn arc_sealed_message_passes() {
        let auth = Authenticator::with_records(&arc_config(), arc_dns()).unwrap();
        let raw = arc_seal(&auth, "arc", &signed(&auth, &["ed"], MESSAGE)).await;
        assert!(raw.starts_with("ARC-Seal: i=1;"), "{raw}");
        // The client is the list server, outside example.org's SPF.
        let report = auth
            .check(&AuthInput {
                client_ip: Some("203.0.113.9".parse().unwrap()),
                ..input(&raw)
            })
            .await;
        assert_eq!(report.arc, AuthResult::Pass, "{report:#?}");
        let ar = &report.authentication_results;
        assert!(ar.contains("arc=pass smtp.remote-ip=203.0.113.9"), "{ar}");
        assert_eq!(report.dkim[0].result, AuthResult::Pass);

        // A second hop (RSA key, another domain) extends the chain: i=2, cv=pass.
        let raw = arc_seal(&auth, "arc-rsa", &raw).await;
        assert!(raw.starts_with("ARC-Seal: i=2;"), "{raw}");
        assert!(raw.contains("cv=pass"), "{raw}");
        let report = auth
            .check(&AuthInput {
                client_ip: Some("2001:db8::9".parse().unwrap()),
                ..input(&raw)
            })
            .await;
        assert_eq!(report.arc, AuthResult::Pass, "{report:#?}");
        assert!(
            report
                .authentication_results
                .contains("arc=pass smtp.remote-ip=\"2001:db8::9\""),
            "{}",
            report.authentication_results
        );
    }

    #[tokio::test]
    async fn arc_tampered_chain_fails() {
        let auth = Authenticator::with_records(&arc_config(), arc_dns()).unwrap();
        let sealed = arc_seal(&auth, "arc", &signed(&auth, &["ed"], MESSAGE)).await;

        // The body changed after sealing.
        let raw = sealed.replace("attached", "ATTACHED");
        let report = auth.check(&input(&raw)).await;
        assert_eq!(report.arc, AuthResult::Fail, "{report:#?}");
        assert!(
            report.authentication_results.contains("arc=fail"),
            "{}",
            report.authentication_results
        );

        // A signed header changed after sealing.
        let raw = sealed.replace("Quarterly", "Yearly");
        assert_eq!(auth.check(&input(&raw)).await.arc, AuthResult::Fail);

        // The seal's own header changed (cv= is covered by the seal).
        let raw = sealed.replacen("i=1; a=ed25519-sha256", "i=1; a=ed25519-sha256; t=1", 1);
        assert!(
            raw.starts_with("ARC-Seal: i=1; a=ed25519-sha256; t=1;"),
            "{raw}"
        );
        let report = auth.check(&input(&raw)).await;
        assert_ne!(report.arc, AuthResult::Pass, "{report:#?}");
        assert_ne!(report.arc, AuthResult::None, "{report:#?}");

        // An incomplete set (the ARC-Authentication-Results header removed).
        let raw: String = sealed
            .split_inclusive("\r\n")
            .scan(false, |skipping, line| {
                if line.starts_with("ARC-Authentication-Results:") {
                    *skipping = true;
                    return Some(String::new());
                }
                if *skipping && (line.starts_with(' ') || line.starts_with('\t')) {
                    return Some(String::new());
                }
                *skipping = false;
                Some(line.to_owned())
            })
            .collect();
        assert!(!raw.contains("ARC-Authentication-Results"));
        assert_eq!(auth.check(&input(&raw)).await.arc, AuthResult::Fail);

        // The sealer's key is not published.
        let unpublished = Authenticator::with_records(&arc_config(), example_org()).unwrap();
        assert_eq!(
            unpublished.check(&input(&sealed)).await.arc,
            AuthResult::Fail
        );
    }

    #[test]
    fn static_dns_parse() {
        let dns = StaticDns::parse(
            "# test zone\n\
             example.org TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n\
             _dmarc.example.org  TXT v=DMARC1; p=none\n\
             \n\
             Mail.Example.org. A 192.0.2.25\n\
             mail.example.org AAAA 2001:db8::25\n\
             example.org MX 10 mail.example.org\n\
             192.0.2.25 PTR mail.example.org\n",
        )
        .unwrap();
        let expected = StaticDns::new()
            .txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
            .txt("_dmarc.example.org", "v=DMARC1; p=none")
            .a("mail.example.org", "192.0.2.25".parse().unwrap())
            .aaaa("mail.example.org", "2001:db8::25".parse().unwrap())
            .mx("example.org", 10, "mail.example.org")
            .ptr("192.0.2.25".parse().unwrap(), "mail.example.org");
        assert_eq!(dns, expected);
        assert!(
            StaticDns::parse("x.org CNAME y.org")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(StaticDns::parse("x.org A 1.2.3").is_err());
        assert!(StaticDns::parse("x.org MX mail").is_err());
        assert!(StaticDns::parse("x.org").is_err());
    }

    #[test]
    fn config_deserializes() {
        let config: AuthConfig = toml::from_str(
            "authserv_id = \"mx.example.com\"\n\
             dns_timeout = \"3s\"\n\
             [dkim_keys.main]\n\
             domain = \"example.com\"\n\
             selector = \"s1\"\n\
             algorithm = \"ed25519-sha256\"\n\
             private_key = \"/etc/wasmail/dkim/s1.pem\"\n",
        )
        .unwrap();
        assert_eq!(config.dns_timeout, Duration::from_secs(3));
        assert_eq!(config.dkim_keys["main"].selector, "s1");
        assert!(config.dkim_keys["main"].headers.is_empty());
        let default: AuthConfig = toml::from_str("").unwrap();
        assert!(!default.authserv_id.is_empty());
        assert_eq!(default.dns_timeout, Duration::from_secs(5));
        assert!(toml::from_str::<AuthConfig>("bogus = 1").is_err());
    }

    #[test]
    fn spki_wrapping() {
        // 2048-bit keys give the familiar "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A" prefix.
        let auth = Authenticator::with_records(&config(), StaticDns::new()).unwrap();
        let record = auth.dkim_public_record("rsa1").unwrap();
        assert!(
            record.contains("p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"),
            "{record}"
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
