//! Commands the MTA sends (`SMFIC_*`), as typed values with a pure decoder and encoder.
//!
//! Strings stay bytes: header values and macros may hold 8-bit data, and a milter must not
//! fail a message because of it. Trailing bytes after the last field of a fixed-format
//! command are ignored (sendmail and Postfix never send any); a string missing its NUL is
//! an error.

use bytes::{BufMut, Bytes, BytesMut};

use crate::flags::{Actions, Protocol, cmd};
use crate::frame::{Frame, begin_frame, finish_frame};
use crate::wire::{DecodeError, put_cstr, take_argv, take_cstr, take_u8, take_u16, take_u32};

/// The MTA's option negotiation offer (`SMFIC_OPTNEG`): version, actions it allows,
/// protocol steps it supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptNeg {
    /// Protocol version (Postfix: 6).
    pub version: u32,
    /// `SMFIF_*` actions (Postfix: 0x1FF).
    pub actions: Actions,
    /// `SMFIP_*` flags (Postfix: 0x1FFFFF).
    pub protocol: Protocol,
}

impl OptNeg {
    /// What Postfix ≥ 2.6 and sendmail 8.14+ offer: version 6, every action, every flag.
    pub const POSTFIX: OptNeg = OptNeg {
        version: 6,
        actions: Actions::CURRENT,
        protocol: Protocol::CURRENT,
    };

    pub(crate) fn decode(payload: &mut Bytes) -> Result<OptNeg, DecodeError> {
        let version = take_u32(payload, "option negotiation version")?;
        let actions = Actions::from_bits_retain(take_u32(payload, "option negotiation actions")?);
        let protocol =
            Protocol::from_bits_retain(take_u32(payload, "option negotiation protocol")?);
        Ok(OptNeg {
            version,
            actions,
            protocol,
        })
    }

    pub(crate) fn put(&self, dst: &mut BytesMut) {
        dst.put_u32(self.version);
        dst.put_u32(self.actions.bits());
        dst.put_u32(self.protocol.bits());
    }
}

/// The client address family in `SMFIC_CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `SMFIA_UNKNOWN` (`U`): no address follows.
    Unknown,
    /// `SMFIA_UNIX` (`L`): a socket path follows.
    Unix,
    /// `SMFIA_INET` (`4`).
    Inet,
    /// `SMFIA_INET6` (`6`).
    Inet6,
}

impl Family {
    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            Family::Unknown => b'U',
            Family::Unix => b'L',
            Family::Inet => b'4',
            Family::Inet6 => b'6',
        }
    }

    fn from_code(b: u8) -> Result<Family, DecodeError> {
        Ok(match b {
            b'U' => Family::Unknown,
            b'L' => Family::Unix,
            b'4' => Family::Inet,
            b'6' => Family::Inet6,
            other => return Err(DecodeError::BadFamily(other)),
        })
    }
}

/// `SMFIC_CONNECT`: the SMTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The client's host name (Postfix: `[addr]` when reverse lookup failed).
    pub hostname: Bytes,
    /// Address family.
    pub family: Family,
    /// Client port (0 for `Unix`, absent for `Unknown`).
    pub port: u16,
    /// Client address as text (IPv6 may carry an `IPv6:` prefix from sendmail); empty for
    /// `Unknown`.
    pub address: Bytes,
}

/// `SMFIC_MAIL` / `SMFIC_RCPT`: an address (with its `<>`) and ESMTP arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The address as the client gave it, angle brackets included.
    pub address: Bytes,
    /// ESMTP parameters such as `SIZE=1234`.
    pub args: Vec<Bytes>,
}

/// One command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SMFIC_OPTNEG` (`O`).
    OptNeg(OptNeg),
    /// `SMFIC_MACRO` (`D`): macro values for the command with code `code`. A dangling name
    /// without a value is dropped.
    Macro {
        /// The command code the macros belong to (Postfix also sends `L`, `B`, `E`, `N`).
        code: u8,
        /// Name/value pairs in the order sent; names as sent (`i` or `{i}`).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `SMFIC_CONNECT` (`C`).
    Connect(Connect),
    /// `SMFIC_HELO` (`H`).
    Helo(Bytes),
    /// `SMFIC_MAIL` (`M`).
    Mail(Envelope),
    /// `SMFIC_RCPT` (`R`).
    Rcpt(Envelope),
    /// `SMFIC_DATA` (`T`).
    Data,
    /// `SMFIC_HEADER` (`L`).
    Header {
        /// Header name.
        name: Bytes,
        /// Value; folded lines are joined by `\n` followed by the original whitespace.
        value: Bytes,
    },
    /// `SMFIC_EOH` (`N`).
    Eoh,
    /// `SMFIC_BODY` (`B`): a body chunk (CRLF line ends, at most 65535 bytes from Postfix).
    Body(Bytes),
    /// `SMFIC_BODYEOB` (`E`): end of message, optionally with a last body chunk.
    BodyEob(Bytes),
    /// `SMFIC_ABORT` (`A`).
    Abort,
    /// `SMFIC_QUIT` (`Q`).
    Quit,
    /// `SMFIC_QUIT_NC` (`K`): quit, but a new connection follows on this socket.
    QuitNc,
    /// `SMFIC_UNKNOWN` (`U`): an SMTP command the MTA did not recognise.
    Unknown(Bytes),
}

impl Command {
    /// The command code.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg(_) => cmd::OPTNEG,
            Command::Macro { .. } => cmd::MACRO,
            Command::Connect(_) => cmd::CONNECT,
            Command::Helo(_) => cmd::HELO,
            Command::Mail(_) => cmd::MAIL,
            Command::Rcpt(_) => cmd::RCPT,
            Command::Data => cmd::DATA,
            Command::Header { .. } => cmd::HEADER,
            Command::Eoh => cmd::EOH,
            Command::Body(_) => cmd::BODY,
            Command::BodyEob(_) => cmd::BODYEOB,
            Command::Abort => cmd::ABORT,
            Command::Quit => cmd::QUIT,
            Command::QuitNc => cmd::QUIT_NC,
            Command::Unknown(_) => cmd::UNKNOWN,
        }
    }

    /// The protocol name, for logs.
    pub fn name(&self) -> &'static str {
        command_name(self.code())
    }

    /// Decodes a frame the MTA sent.
    pub fn decode(frame: Frame) -> Result<Command, DecodeError> {
        let Frame { code, mut payload } = frame;
        let p = &mut payload;
        Ok(match code {
            cmd::OPTNEG => Command::OptNeg(OptNeg::decode(p)?),
            cmd::MACRO => {
                let code = take_u8(p, "macro command code")?;
                let strings = take_argv(std::mem::take(p), "macro")?;
                let mut pairs = Vec::with_capacity(strings.len() / 2);
                let mut it = strings.into_iter();
                while let (Some(name), Some(value)) = (it.next(), it.next()) {
                    pairs.push((name, value));
                }
                Command::Macro { code, pairs }
            }
            cmd::CONNECT => {
                let hostname = take_cstr(p, "connect hostname")?;
                let family = Family::from_code(take_u8(p, "connect family")?)?;
                let (port, address) = if family == Family::Unknown {
                    (0, Bytes::new())
                } else {
                    let port = take_u16(p, "connect port")?;
                    (port, take_cstr(p, "connect address")?)
                };
                Command::Connect(Connect {
                    hostname,
                    family,
                    port,
                    address,
                })
            }
            cmd::HELO => Command::Helo(take_cstr(p, "helo")?),
            cmd::MAIL | cmd::RCPT => {
                let what = if code == cmd::MAIL { "mail" } else { "rcpt" };
                let mut argv = take_argv(std::mem::take(p), what)?;
                if argv.is_empty() {
                    return Err(DecodeError::Truncated { what });
                }
                let address = argv.remove(0);
                let env = Envelope {
                    address,
                    args: argv,
                };
                if code == cmd::MAIL {
                    Command::Mail(env)
                } else {
                    Command::Rcpt(env)
                }
            }
            cmd::DATA => Command::Data,
            cmd::HEADER => {
                let name = take_cstr(p, "header name")?;
                let value = take_cstr(p, "header value")?;
                Command::Header { name, value }
            }
            cmd::EOH => Command::Eoh,
            cmd::BODY => Command::Body(payload),
            cmd::BODYEOB => Command::BodyEob(payload),
            cmd::ABORT => Command::Abort,
            cmd::QUIT => Command::Quit,
            cmd::QUIT_NC => Command::QuitNc,
            cmd::UNKNOWN => Command::Unknown(take_cstr(p, "unknown command")?),
            other => return Err(DecodeError::UnknownCode(other)),
        })
    }

    /// Appends this command as one frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = begin_frame(self.code(), dst);
        match self {
            Command::OptNeg(o) => o.put(dst),
            Command::Macro { code, pairs } => {
                dst.put_u8(*code);
                for (n, v) in pairs {
                    put_cstr(dst, n);
                    put_cstr(dst, v);
                }
            }
            Command::Connect(c) => {
                put_cstr(dst, &c.hostname);
                dst.put_u8(c.family.code());
                if c.family != Family::Unknown {
                    dst.put_u16(c.port);
                    put_cstr(dst, &c.address);
                }
            }
            Command::Helo(s) | Command::Unknown(s) => put_cstr(dst, s),
            Command::Mail(e) | Command::Rcpt(e) => {
                put_cstr(dst, &e.address);
                for a in &e.args {
                    put_cstr(dst, a);
                }
            }
            Command::Header { name, value } => {
                put_cstr(dst, name);
                put_cstr(dst, value);
            }
            Command::Body(b) | Command::BodyEob(b) => dst.put_slice(b),
            Command::Data | Command::Eoh | Command::Abort | Command::Quit | Command::QuitNc => {}
        }
        finish_frame(start, dst);
    }
}

/// The protocol name of a command code, for logs.
pub fn command_name(code: u8) -> &'static str {
    match code {
        cmd::OPTNEG => "OPTNEG",
        cmd::MACRO => "MACRO",
        cmd::CONNECT => "CONNECT",
        cmd::HELO => "HELO",
        cmd::MAIL => "MAIL",
        cmd::RCPT => "RCPT",
        cmd::DATA => "DATA",
        cmd::HEADER => "HEADER",
        cmd::EOH => "EOH",
        cmd::BODY => "BODY",
        cmd::BODYEOB => "BODYEOB",
        cmd::ABORT => "ABORT",
        cmd::QUIT => "QUIT",
        cmd::QUIT_NC => "QUIT_NC",
        cmd::UNKNOWN => "UNKNOWN",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_frame;

    fn decode_bytes(code: u8, payload: &[u8]) -> Result<Command, DecodeError> {
        Command::decode(Frame {
            code,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    #[test]
    fn postfix_connect_inet() {
        let mut p = b"client.example\x004".to_vec();
        p.extend_from_slice(&12345u16.to_be_bytes());
        p.extend_from_slice(b"192.0.2.1\0");
        let c = decode_bytes(b'C', &p).unwrap();
        assert_eq!(
            c,
            Command::Connect(Connect {
                hostname: Bytes::from_static(b"client.example"),
                family: Family::Inet,
                port: 12345,
                address: Bytes::from_static(b"192.0.2.1"),
            })
        );
    }

    #[test]
    fn connect_unknown_family_has_no_address() {
        let c = decode_bytes(b'C', b"localhost\0U").unwrap();
        assert!(matches!(
            c,
            Command::Connect(Connect {
                family: Family::Unknown,
                port: 0,
                ..
            })
        ));
    }

    #[test]
    fn connect_errors_name_the_field() {
        assert_eq!(
            decode_bytes(b'C', b"host-without-nul"),
            Err(DecodeError::MissingNul {
                what: "connect hostname"
            })
        );
        assert_eq!(
            decode_bytes(b'C', b"h\x004\x30"),
            Err(DecodeError::Truncated {
                what: "connect port"
            })
        );
        assert_eq!(
            decode_bytes(b'C', b"h\0X"),
            Err(DecodeError::BadFamily(b'X'))
        );
    }

    #[test]
    fn mail_with_esmtp_args() {
        let c = decode_bytes(b'M', b"<a@example.com>\0SIZE=10\0BODY=8BITMIME\0").unwrap();
        let Command::Mail(env) = c else { panic!() };
        assert_eq!(&env.address[..], b"<a@example.com>");
        assert_eq!(env.args.len(), 2);
        assert_eq!(
            decode_bytes(b'M', b""),
            Err(DecodeError::Truncated { what: "mail" })
        );
    }

    #[test]
    fn macro_tolerates_empty_and_odd_lists() {
        assert_eq!(
            decode_bytes(b'D', b"H").unwrap(),
            Command::Macro {
                code: b'H',
                pairs: vec![]
            }
        );
        let Command::Macro { pairs, .. } = decode_bytes(b'D', b"Ci\0Q1\0dangling\0").unwrap()
        else {
            panic!()
        };
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            decode_bytes(b'D', b""),
            Err(DecodeError::Truncated {
                what: "macro command code"
            })
        );
        assert_eq!(
            decode_bytes(b'D', b"Ci\0Q1"),
            Err(DecodeError::MissingNul { what: "macro" })
        );
    }

    #[test]
    fn header_needs_two_strings() {
        assert_eq!(
            decode_bytes(b'L', b"Subject\0"),
            Err(DecodeError::Truncated {
                what: "header value"
            })
        );
        let c = decode_bytes(b'L', b"Subject\0hi\n\tthere\0").unwrap();
        assert_eq!(
            c,
            Command::Header {
                name: Bytes::from_static(b"Subject"),
                value: Bytes::from_static(b"hi\n\tthere")
            }
        );
    }

    #[test]
    fn unknown_code_is_an_error() {
        assert_eq!(decode_bytes(b'Z', b""), Err(DecodeError::UnknownCode(b'Z')));
    }

    #[test]
    fn optneg_short_and_long() {
        assert!(matches!(
            decode_bytes(b'O', &[0, 0, 0, 6]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut p = Vec::new();
        p.extend_from_slice(&6u32.to_be_bytes());
        p.extend_from_slice(&0x1ffu32.to_be_bytes());
        p.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
        p.extend_from_slice(b"extra");
        assert_eq!(
            decode_bytes(b'O', &p).unwrap(),
            Command::OptNeg(OptNeg::POSTFIX)
        );
    }

    #[test]
    fn encode_then_frame_decode() {
        let mut buf = BytesMut::new();
        let c = Command::Rcpt(Envelope {
            address: Bytes::from_static(b"<b@example.net>"),
            args: vec![Bytes::from_static(b"NOTIFY=NEVER")],
        });
        c.encode(&mut buf);
        let f = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(Command::decode(f).unwrap(), c);
    }
}
