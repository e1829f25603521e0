//! The peer transport's wire format.
//!
//! A QUIC stream opened by a dialer starts with one [`StreamKind`] byte, followed by
//! length-delimited frames: a 4-byte big-endian length (at most the configured maximum
//! frame length), then the frame body. A frame body is one version byte
//! ([`WIRE_VERSION`]) followed by a postcard-encoded [`Frame`].
//!
//! On a [`StreamKind::Messages`] stream the dialer sends an optional [`Hello`] first,
//! then one [`Frame::Message`] per Raft message. The hello is informational: the
//! sender's identity always comes from its TLS certificate.
//!
//! A [`StreamKind::Snapshot`] stream is bidirectional and carries one snapshot file:
//! the sender writes a [`Frame::SnapshotHeader`], then [`Frame::SnapshotChunk`]s
//! holding exactly the announced number of bytes, and finishes its half; the receiver
//! answers with one [`Frame::SnapshotAck`] on the other half.

use std::io;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::core::{Message, NodeId, Term};

/// The current frame version.
pub const WIRE_VERSION: u8 = 1;

/// The default maximum frame length (16 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// What a stream carries; the first byte of every stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// Ordered Raft messages (replication, heartbeats, votes).
    Messages = 1,
    /// One snapshot file, on a bidirectional stream of its own.
    Snapshot = 2,
}

impl StreamKind {
    /// The byte that announces this kind.
    pub fn as_byte(self) -> u8 {
        self as u8
    }

    /// Parses a stream kind byte.
    pub fn from_byte(byte: u8) -> Result<Self, FrameError> {
        match byte {
            1 => Ok(StreamKind::Messages),
            2 => Ok(StreamKind::Snapshot),
            other => Err(FrameError::UnknownStreamKind(other)),
        }
    }
}

/// The optional first frame of a messages stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node id the dialer claims; must match its certificate.
    pub node_id: NodeId,
    /// The dialer's cluster id, if configured; must match ours if both are set.
    pub cluster_id: Option<String>,
}

/// The first frame of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sender; must match its certificate.
    pub from: NodeId,
    /// The recipient; must be the receiving node.
    pub to: NodeId,
    /// The sender's term.
    pub term: Term,
    /// The file's length in bytes: the chunks that follow hold exactly this many.
    pub len: u64,
}

/// The receiver's answer on a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    /// Whether the snapshot was verified and accepted.
    pub ok: bool,
    /// Why not, when not.
    pub reason: String,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub enum Frame {
    /// The dialer introduces itself.
    Hello(Hello),
    /// One Raft message.
    Message(Message),
    /// Opens a snapshot stream.
    SnapshotHeader(SnapshotHeader),
    /// The next bytes of the snapshot file.
    SnapshotChunk(Bytes),
    /// The receiver's verdict on a snapshot.
    SnapshotAck(SnapshotAck),
}

/// A frame to encode, borrowing its contents. Encodes exactly like [`Frame`].
#[derive(Clone, Copy, Debug, Serialize)]
pub enum FrameRef<'a> {
    /// See [`Frame::Hello`].
    Hello(&'a Hello),
    /// See [`Frame::Message`].
    Message(&'a Message),
    /// See [`Frame::SnapshotHeader`].
    SnapshotHeader(&'a SnapshotHeader),
    /// See [`Frame::SnapshotChunk`].
    SnapshotChunk(&'a Bytes),
    /// See [`Frame::SnapshotAck`].
    SnapshotAck(&'a SnapshotAck),
}

/// Bytes a [`Frame::SnapshotChunk`] adds around its data (version byte, variant tag,
/// length varint), with room to spare.
pub const SNAPSHOT_CHUNK_OVERHEAD: usize = 32;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The underlying stream failed.
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    /// A frame is longer than the maximum frame length.
    #[error("frame longer than the maximum of {max} bytes")]
    TooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A frame had no version byte.
    #[error("empty frame")]
    Empty,
    /// A frame had an unknown version byte.
    #[error("unknown frame version {0}")]
    UnknownVersion(u8),
    /// A stream began with an unknown kind byte.
    #[error("unknown stream kind {0}")]
    UnknownStreamKind(u8),
    /// A frame body could not be decoded.
    #[error("malformed frame: {0}")]
    Decode(#[source] postcard::Error),
    /// A frame body had bytes left over after decoding.
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    /// A frame could not be encoded.
    #[error("encoding a frame: {0}")]
    Encode(#[source] postcard::Error),
}

impl FrameError {
    /// Whether the error is a failure of the underlying stream rather than bad data.
    pub fn is_io(&self) -> bool {
        matches!(self, FrameError::Io(_))
    }
}

/// Codec for frames: [`LengthDelimitedCodec`] with an explicit maximum frame length,
/// plus the version byte and postcard body.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_len: usize,
}

impl FrameCodec {
    /// A codec accepting frames of at most `max_frame_len` bytes (version byte
    /// included).
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .big_endian()
                .max_frame_length(max_frame_len)
                .new_codec(),
            max_frame_len,
        }
    }

    /// The maximum frame length.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    fn map_inner(&self, err: io::Error) -> FrameError {
        let too_large = err
            .get_ref()
            .is_some_and(|e| e.is::<tokio_util::codec::LengthDelimitedCodecError>());
        if too_large {
            FrameError::TooLarge {
                max: self.max_frame_len,
            }
        } else {
            FrameError::Io(err)
        }
    }
}

/// Decodes one frame body (version byte + postcard).
pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (&version, rest) = body.split_first().ok_or(FrameError::Empty)?;
    if version != WIRE_VERSION {
        return Err(FrameError::UnknownVersion(version));
    }
    let (frame, trailing) = postcard::take_from_bytes::<Frame>(rest).map_err(FrameError::Decode)?;
    if !trailing.is_empty() {
        return Err(FrameError::TrailingBytes(trailing.len()));
    }
    Ok(frame)
}

/// Encodes one frame body (version byte + postcard).
pub fn encode_body(frame: FrameRef<'_>) -> Result<Vec<u8>, FrameError> {
    let hint = match frame {
        FrameRef::SnapshotChunk(data) => data.len() + SNAPSHOT_CHUNK_OVERHEAD,
        _ => 128,
    };
    let mut out = Vec::with_capacity(hint);
    out.push(WIRE_VERSION);
    postcard::to_extend(&frame, out).map_err(FrameError::Encode)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.inner.decode(src) {
            Ok(Some(body)) => decode_body(&body).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.map_inner(e)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<FrameRef<'_>> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: FrameRef<'_>, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = encode_body(frame)?;
        if body.len() > self.max_frame_len {
            return Err(FrameError::TooLarge {
                max: self.max_frame_len,
            });
        }
        self.inner
            .encode(Bytes::from(body), dst)
            .map_err(|e| self.map_inner(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{AppendEntries, Entry, EntryPayload, MessageBody};

    fn msg() -> Message {
        Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append(AppendEntries {
                prev_index: 4,
                prev_term: 3,
                entries: vec![Entry {
                    term: 3,
                    index: 5,
                    payload: EntryPayload::Normal(Bytes::from_static(b"hello")),
                }],
                commit: 4,
            }),
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        let hello = Hello {
            node_id: 1,
            cluster_id: Some("c".into()),
        };
        let m = msg();
        codec.encode(FrameRef::Hello(&hello), &mut buf).unwrap();
        codec.encode(FrameRef::Message(&m), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Hello(hello)));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Frame::Message(m)));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn snapshot_frames_round_trip() {
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let header = SnapshotHeader {
            from: 1,
            to: 2,
            term: 3,
            len: 5,
        };
        let chunk = Bytes::from_static(b"abcde");
        let ack = SnapshotAck {
            ok: false,
            reason: "busy".into(),
        };
        codec.encode(FrameRef::SnapshotHeader(&header), &mut buf).unwrap();
        codec.encode(FrameRef::SnapshotChunk(&chunk), &mut buf).unwrap();
        codec.encode(FrameRef::SnapshotAck(&ack), &mut buf).unwrap();
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::SnapshotHeader(header))
        );
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::SnapshotChunk(chunk)));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::SnapshotAck(ack)));
        // The overhead bound holds for a full-size chunk.
        let big = Bytes::from(vec![7u8; 1 << 16]);
        let body = encode_body(FrameRef::SnapshotChunk(&big)).unwrap();
        assert!(body.len() <= big.len() + SNAPSHOT_CHUNK_OVERHEAD);
        assert_eq!(StreamKind::from_byte(2).unwrap(), StreamKind::Snapshot);
    }

    #[test]
    fn partial_frames_wait_and_truncation_is_an_error() {
        let mut codec = FrameCodec::new(1024);
        let mut full = BytesMut::new();
        codec.encode(FrameRef::Message(&msg()), &mut full).unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(codec.decode(&mut part).unwrap(), None);
        assert!(matches!(codec.decode_eof(&mut part), Err(FrameError::Truncated)));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let mut codec = FrameCodec::new(16);
        let mut big = BytesMut::from(&[0u8, 0, 0, 17][..]);
        assert!(matches!(
            codec.decode(&mut big),
            Err(FrameError::TooLarge { max: 16 })
        ));
        assert!(matches!(
            codec.encode(FrameRef::Message(&msg()), &mut BytesMut::new()),
            Err(FrameError::TooLarge { max: 16 })
        ));
        assert!(matches!(decode_body(&[]), Err(FrameError::Empty)));
        assert!(matches!(decode_body(&[2, 1]), Err(FrameError::UnknownVersion(2))));
        assert!(matches!(
            decode_body(&[WIRE_VERSION, 9]),
            Err(FrameError::Decode(_))
        ));
        let mut body = encode_body(FrameRef::Message(&msg())).unwrap();
        body.push(0);
        assert!(matches!(decode_body(&body), Err(FrameError::TrailingBytes(1))));
        assert!(matches!(
            StreamKind::from_byte(0),
            Err(FrameError::UnknownStreamKind(0))
        ));
    }
}
