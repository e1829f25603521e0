//! The snapshot file format, shared by the file on disk and the bytes on the wire.
//!
//! ```text
//! magic            8 bytes   "RAFTSNAP"
//! format version   u32 LE    1
//! meta length      u32 LE    at most MAX_META_LEN
//! meta             postcard  SnapshotMeta { index, term, membership }
//! image length     u64 LE
//! image            bytes     the state machine's image, opaque here
//! checksum         32 bytes  SHA-256 of every byte above
//! ```
//!
//! A [`Verifier`] checks a file incrementally, in any chunking: a sender streams the
//! file as it is on disk, and the receiver verifies it while it writes it down, so the
//! image is never held in memory for the transfer.

use ring::digest;

use crate::core::SnapshotMeta;

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"RAFTSNAP";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the trailing SHA-256.
pub const CHECKSUM_LEN: usize = 32;
/// The largest encoded meta accepted (a membership with addresses is small; this only
/// keeps a damaged length field from asking for a huge buffer).
pub const MAX_META_LEN: u32 = 1 << 20;

/// Bytes before the meta: magic, version, meta length.
const PREFIX_LEN: usize = 8 + 4 + 4;

/// Why bytes are not a valid snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with the magic bytes.
    #[error("not a snapshot file (bad magic bytes)")]
    BadMagic,
    /// The file is of a format version this code does not read.
    #[error("unsupported snapshot format version {0} (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    /// The meta length field is out of range.
    #[error("meta length {0} exceeds the maximum of {MAX_META_LEN}")]
    MetaTooLong(u32),
    /// The meta does not decode.
    #[error("meta does not decode: {0}")]
    BadMeta(String),
    /// The file ends before its declared end.
    #[error("truncated: ended after {got} bytes, inside the {part}")]
    Truncated {
        /// Bytes seen.
        got: u64,
        /// Which part was incomplete.
        part: &'static str,
    },
    /// Bytes follow the checksum.
    #[error("{0} unexpected bytes after the checksum")]
    Trailing(u64),
    /// The checksum does not match the content.
    #[error("checksum mismatch")]
    Checksum,
}

/// Encodes the header (everything before the image) of a file holding `meta` and an
/// image of `image_len` bytes.
pub fn encode_header(meta: &SnapshotMeta, image_len: u64) -> Result<Vec<u8>, FormatError> {
    let meta_bytes = postcard::to_stdvec(meta).map_err(|e| FormatError::BadMeta(e.to_string()))?;
    let meta_len = u32::try_from(meta_bytes.len())
        .ok()
        .filter(|&l| l <= MAX_META_LEN)
        .ok_or(FormatError::MetaTooLong(u32::MAX))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + meta_bytes.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&meta_bytes);
    out.extend_from_slice(&image_len.to_le_bytes());
    Ok(out)
}

/// A running SHA-256 for writers: feed the header and the image, then append
/// [`Checksummer::finish`].
pub struct Checksummer(digest::Context);

impl Default for Checksummer {
    fn default() -> Self {
        Checksummer(digest::Context::new(&digest::SHA256))
    }
}

impl Checksummer {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum to append.
    pub fn finish(self) -> [u8; CHECKSUM_LEN] {
        let mut out = [0u8; CHECKSUM_LEN];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

enum Part {
    /// Magic, version and meta length.
    Prefix,
    /// The meta, of this length.
    Meta(usize),
    /// The image length.
    ImageLen,
    /// Image bytes still to come.
    Image(u64),
    /// The checksum.
    Checksum,
    /// Everything was seen.
    Done,
}

impl Part {
    fn name(&self) -> &'static str {
        match self {
            Part::Prefix => "header",
            Part::Meta(_) => "meta",
            Part::ImageLen => "image length",
            Part::Image(_) => "image",
            Part::Checksum => "checksum",
            Part::Done => "end",
        }
    }
}

/// What a verified file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The snapshot's meta.
    pub meta: SnapshotMeta,
    /// Offset of the image in the file.
    pub image_offset: u64,
    /// Length of the image.
    pub image_len: u64,
    /// Length of the whole file.
    pub file_len: u64,
}

/// Checks a snapshot file fed in arbitrary chunks.
pub struct Verifier {
    digest: digest::Context,
    part: Part,
    /// Bytes of the current fixed-size or meta part gathered so far.
    buf: Vec<u8>,
    meta: Option<SnapshotMeta>,
    image_offset: u64,
    image_len: u64,
    seen: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            digest: digest::Context::new(&digest::SHA256),
            part: Part::Prefix,
            buf: Vec::with_capacity(64),
            meta: None,
            image_offset: 0,
            image_len: 0,
            seen: 0,
        }
    }
}

impl Verifier {
    /// A verifier at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// The meta, once the header has been seen.
    pub fn meta(&self) -> Option<&SnapshotMeta> {
        self.meta.as_ref()
    }

    /// Bytes fed so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Gathers up to `want` bytes of a fixed-size part into `buf`; returns how many of
    /// `data` were used.
    fn gather(&mut self, data: &[u8], want: usize) -> usize {
        let n = (want - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), FormatError> {
        while !data.is_empty() {
            let used = match self.part {
                Part::Prefix => {
                    let n = self.gather(data, PREFIX_LEN);
                    if self.buf.len() == PREFIX_LEN {
                        if self.buf[..8] != MAGIC {
                            return Err(FormatError::BadMagic);
                        }
                        let version = u32::from_le_bytes(le4(&self.buf[8..12]));
                        if version != FORMAT_VERSION {
                            return Err(FormatError::UnsupportedVersion(version));
                        }
                        let meta_len = u32::from_le_bytes(le4(&self.buf[12..16]));
                        if meta_len > MAX_META_LEN {
                            return Err(FormatError::MetaTooLong(meta_len));
                        }
                        self.buf.clear();
                        self.part = Part::Meta(meta_len as usize);
                    }
                    n
                }
                Part::Meta(len) => {
                    let n = self.gather(data, len);
                    if self.buf.len() == len {
                        let meta: SnapshotMeta = postcard::from_bytes(&self.buf)
                            .map_err(|e| FormatError::BadMeta(e.to_string()))?;
                        self.meta = Some(meta);
                        self.buf.clear();
                        self.part = Part::ImageLen;
                    }
                    n
                }
                Part::ImageLen => {
                    let n = self.gather(data, 8);
                    if self.buf.len() == 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf);
                        self.image_len = u64::from_le_bytes(b);
                        self.image_offset = self.seen + n as u64;
                        self.buf.clear();
                        self.part = Part::Image(self.image_len);
                    }
                    n
                }
                Part::Image(remaining) => {
                    let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(data.len());
                    let left = remaining - n as u64;
                    if left == 0 {
                        self.part = Part::Checksum;
                    } else {
                        self.part = Part::Image(left);
                    }
                    n
                }
                Part::Checksum => {
                    // The checksum is not part of what it sums.
                    let n = self.gather(data, CHECKSUM_LEN);
                    self.seen += n as u64;
                    data = &data[n..];
                    if self.buf.len() == CHECKSUM_LEN {
                        self.part = Part::Done;
                    }
                    continue;
                }
                Part::Done => return Err(FormatError::Trailing(data.len() as u64)),
            };
            self.digest.update(&data[..used]);
            self.seen += used as u64;
            data = &data[used..];
            // A zero-length image goes straight to the checksum.
            if let Part::Image(0) = self.part {
                self.part = Part::Checksum;
            }
        }
        Ok(())
    }

    /// Checks that the file is complete and its checksum matches.
    pub fn finish(self) -> Result<Verified, FormatError> {
        if !matches!(self.part, Part::Done) {
            return Err(FormatError::Truncated {
                got: self.seen,
                part: self.part.name(),
            });
        }
        let sum = self.digest.finish();
        if sum.as_ref() != self.buf.as_slice() {
            return Err(FormatError::Checksum);
        }
        let meta = self.meta.ok_or(FormatError::Truncated {
            got: self.seen,
            part: "meta",
        })?;
        Ok(Verified {
            meta,
            image_offset: self.image_offset,
            image_len: self.image_len,
            file_len: self.seen,
        })
    }
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    out.copy_from_slice(&b[..4]);
    out
}

/// Encodes a whole file in memory (tests and small images).
pub fn encode_file(meta: &SnapshotMeta, image: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = encode_header(meta, image.len() as u64)?;
    out.extend_from_slice(image);
    let mut sum = Checksummer::default();
    sum.update(&out);
    out.extend_from_slice(&sum.finish());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Membership;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            index: 42,
            term: 7,
            membership: Membership::with_voters([1, 2, 3]),
        }
    }

    fn verify_chunked(file: &[u8], chunk: usize) -> Result<Verified, FormatError> {
        let mut v = Verifier::new();
        for c in file.chunks(chunk.max(1)) {
            v.update(c)?;
        }
        v.finish()
    }

    #[test]
    fn a_file_verifies_in_any_chunking() {
        let image: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let file = encode_file(&meta(), &image).unwrap();
        for chunk in [1, 3, 7, 64, 4096, file.len()] {
            let v = verify_chunked(&file, chunk).unwrap();
            assert_eq!(v.meta, meta());
            assert_eq!(v.image_len, image.len() as u64);
            assert_eq!(v.file_len, file.len() as u64);
            let off = v.image_offset as usize;
            assert_eq!(&file[off..off + image.len()], &image[..]);
        }
    }

    #[test]
    fn an_empty_image_is_valid() {
        let file = encode_file(&meta(), &[]).unwrap();
        let v = verify_chunked(&file, 5).unwrap();
        assert_eq!(v.image_len, 0);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let file = encode_file(&meta(), b"some image bytes").unwrap();
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(
                verify_chunked(&bad, 3).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let file = encode_file(&meta(), b"some image bytes").unwrap();
        for len in 0..file.len() {
            let err = verify_chunked(&file[..len], 4).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated { .. }),
                "truncated at {len}: {err:?}"
            );
        }
    }

    #[test]
    fn wrong_magic_version_and_trailing_bytes_are_named() {
        let file = encode_file(&meta(), b"img").unwrap();
        let mut bad = file.clone();
        bad[0] = b'X';
        assert_eq!(verify_chunked(&bad, 100).unwrap_err(), FormatError::BadMagic);
        let mut bad = file.clone();
        bad[8] = 9;
        assert_eq!(
            verify_chunked(&bad, 100).unwrap_err(),
            FormatError::UnsupportedVersion(9)
        );
        let mut bad = file.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            verify_chunked(&bad, 100).unwrap_err(),
            FormatError::MetaTooLong(u32::MAX)
        );
        let mut long = file.clone();
        long.push(0);
        assert_eq!(verify_chunked(&long, 100).unwrap_err(), FormatError::Trailing(1));
    }
}
