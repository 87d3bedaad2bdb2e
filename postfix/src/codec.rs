//! `tokio_util::codec` wrappers (feature `tokio`): per protocol a `ServerCodec` (decodes
//! requests, encodes replies) and a `ClientCodec` (encodes requests, decodes replies),
//! re-exported from the protocol modules. They add nothing to the plain functions but
//! state (limits, and for policy the resumable line scan) and [`CodecError`].

use std::io;

/// A codec error: the protocol module's error, or an I/O error from the transport
/// (`tokio_util` requires the latter).
#[derive(Debug, thiserror::Error)]
pub enum CodecError<E> {
    /// The peer broke the protocol; the connection should be closed.
    #[error(transparent)]
    Protocol(E),
    /// Reading or writing failed (also: the stream ended inside a message).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

macro_rules! protocol_error {
    ($e:ty) => {
        impl From<$e> for CodecError<$e> {
            fn from(e: $e) -> Self {
                CodecError::Protocol(e)
            }
        }
    };
}

protocol_error!(crate::socketmap::Error);
protocol_error!(crate::tcp::Error);
protocol_error!(crate::policy::Error);

pub(crate) mod socketmap {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::CodecError;
    use crate::socketmap::{
        DEFAULT_MAX_REQUEST, Error, MAX_REPLY, Reply, Request, decode_reply, decode_request,
        encode_reply, encode_request,
    };

    /// Server side of socketmap: decodes [`Request`]s, encodes [`Reply`]s.
    #[derive(Debug, Clone, Copy)]
    pub struct ServerCodec {
        max_request: usize,
    }

    impl ServerCodec {
        /// Request payloads are capped at `max_request` bytes (framing excluded).
        pub fn new(max_request: usize) -> Self {
            Self { max_request }
        }
    }

    impl Default for ServerCodec {
        /// Capped at [`DEFAULT_MAX_REQUEST`].
        fn default() -> Self {
            Self::new(DEFAULT_MAX_REQUEST)
        }
    }

    impl Decoder for ServerCodec {
        type Item = Request;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, Self::Error> {
            Ok(decode_request(src, self.max_request)?)
        }
    }

    impl Encoder<Reply> for ServerCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Reply, dst: &mut BytesMut) -> Result<(), Self::Error> {
            encode_reply(&item, dst);
            Ok(())
        }
    }

    /// Client side of socketmap (what Postfix does): encodes [`Request`]s, decodes
    /// [`Reply`]s of at most [`MAX_REPLY`] payload bytes.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ClientCodec;

    impl Decoder for ClientCodec {
        type Item = Reply;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, Self::Error> {
            Ok(decode_reply(src, MAX_REPLY)?)
        }
    }

    impl Encoder<Request> for ClientCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Request, dst: &mut BytesMut) -> Result<(), Self::Error> {
            Ok(encode_request(&item, dst)?)
        }
    }
}

pub(crate) mod tcp {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::CodecError;
    use crate::tcp::{
        Error, Reply, Request, decode_reply, decode_request, encode_reply, encode_request,
    };

    /// Server side of tcp_table: decodes [`Request`]s (lines up to
    /// [`MAX_LINE`](crate::tcp::MAX_LINE)), encodes [`Reply`]s.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ServerCodec;

    impl Decoder for ServerCodec {
        type Item = Request;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, Self::Error> {
            Ok(decode_request(src)?)
        }
    }

    impl Encoder<Reply> for ServerCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Reply, dst: &mut BytesMut) -> Result<(), Self::Error> {
            encode_reply(&item, dst);
            Ok(())
        }
    }

    /// Client side of tcp_table (what Postfix does): encodes [`Request`]s, decodes
    /// [`Reply`]s (200, 500, 400 only).
    #[derive(Debug, Clone, Copy, Default)]
    pub struct ClientCodec;

    impl Decoder for ClientCodec {
        type Item = Reply;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, Self::Error> {
            Ok(decode_reply(src)?)
        }
    }

    impl Encoder<Request> for ClientCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Request, dst: &mut BytesMut) -> Result<(), Self::Error> {
            Ok(encode_request(&item, dst)?)
        }
    }
}

pub(crate) mod policy {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    use super::CodecError;
    use crate::policy::{
        Error, Limits, Reply, Request, Scan, decode_block, decode_reply_with, encode_reply,
        encode_request,
    };

    /// Server side of policy delegation: decodes [`Request`]s within [`Limits`], encodes
    /// [`Reply`]s. Keeps its place in a partly received request, so trickled input is
    /// scanned once.
    #[derive(Debug, Clone, Default)]
    pub struct ServerCodec {
        limits: Limits,
        scan: Scan,
    }

    impl ServerCodec {
        /// A codec enforcing `limits`.
        pub fn new(limits: Limits) -> Self {
            Self {
                limits,
                scan: Scan::default(),
            }
        }
    }

    impl Decoder for ServerCodec {
        type Item = Request;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>, Self::Error> {
            Ok(decode_block(src, &self.limits, &mut self.scan)?.map(|attrs| Request { attrs }))
        }
    }

    impl Encoder<Reply> for ServerCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Reply, dst: &mut BytesMut) -> Result<(), Self::Error> {
            encode_reply(&item, dst);
            Ok(())
        }
    }

    /// Client side of policy delegation (what Postfix does): encodes [`Request`]s, decodes
    /// [`Reply`] blocks within [`Limits`].
    #[derive(Debug, Clone, Default)]
    pub struct ClientCodec {
        limits: Limits,
        scan: Scan,
    }

    impl ClientCodec {
        /// A codec reading replies within `limits`.
        pub fn new(limits: Limits) -> Self {
            Self {
                limits,
                scan: Scan::default(),
            }
        }
    }

    impl Decoder for ClientCodec {
        type Item = Reply;
        type Error = CodecError<Error>;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, Self::Error> {
            Ok(decode_reply_with(src, &self.limits, &mut self.scan)?)
        }
    }

    impl Encoder<Request> for ClientCodec {
        type Error = CodecError<Error>;

        fn encode(&mut self, item: Request, dst: &mut BytesMut) -> Result<(), Self::Error> {
            Ok(encode_request(&item, dst)?)
        }
    }
}
