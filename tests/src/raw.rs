//! Raw client-channel connections: frames written byte for byte, answers read with
//! the bank protocol's own decoder. For checks the client library would hide (a
//! redirect, a bad frame).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bank_app::protocol::{
    encode_frame, read_frame, ClientFrame, ClientRequest, FrameError, Hello, RequestKind, ServerFrame,
    CLIENT_SERVER_NAME, DEFAULT_MAX_FRAME_LEN,
};
use quinn::{Connection, Endpoint, VarInt};

/// Errors of a raw exchange.
#[derive(Debug)]
pub enum RawError {
    /// Setting up TLS or the endpoint failed.
    Setup(String),
    /// The connection could not be made.
    Connect(String),
    /// No answer in time.
    Timeout,
    /// The answer could not be read or decoded (a closed or reset stream is
    /// [`FrameError::is_io`]).
    Frame(FrameError),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Setup(e) => write!(f, "setup: {e}"),
            RawError::Connect(e) => write!(f, "connect: {e}"),
            RawError::Timeout => f.write_str("no answer in time"),
            RawError::Frame(e) => write!(f, "frame: {e}"),
        }
    }
}

impl std::error::Error for RawError {}

/// A QUIC connection to one node's client channel, driven by hand.
pub struct RawConn {
    endpoint: Endpoint,
    conn: Connection,
    timeout: Duration,
}

impl std::fmt::Debug for RawConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConn")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl RawConn {
    /// Connects (TLS trusting `ca_pem`) without saying anything yet.
    pub async fn dial(addr: SocketAddr, ca_pem: &str, timeout: Duration) -> Result<RawConn, RawError> {
        let tls = bank_app::tls::client_config(ca_pem).map_err(|e| RawError::Setup(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| RawError::Setup(e.to_string()))?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        };
        let mut endpoint = Endpoint::client(bind).map_err(|e| RawError::Setup(e.to_string()))?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connecting = endpoint
            .connect(addr, CLIENT_SERVER_NAME)
            .map_err(|e| RawError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| RawError::Timeout)?
            .map_err(|e| RawError::Connect(e.to_string()))?;
        Ok(RawConn {
            endpoint,
            conn,
            timeout,
        })
    }

    /// Connects and says hello (no token); returns the connection and the node's
    /// answer to the hello.
    pub async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        timeout: Duration,
    ) -> Result<(RawConn, ServerFrame), RawError> {
        let raw = RawConn::dial(addr, ca_pem, timeout).await?;
        let hello = ClientFrame::Hello(Hello {
            token: None,
            client: "integration-tests/raw".into(),
        });
        let answer = raw.exchange(&encode(&hello)?).await?;
        Ok((raw, answer))
    }

    /// Opens a stream, writes `bytes` exactly as given, finishes the stream and reads
    /// one server frame.
    pub async fn exchange(&self, bytes: &[u8]) -> Result<ServerFrame, RawError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| RawError::Frame(FrameError::Io(e.into())))?;
        // The node may stop our side before reading it all (an oversized frame); the
        // answer is read regardless.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        tokio::time::timeout(
            self.timeout,
            read_frame::<ServerFrame, _>(&mut recv, DEFAULT_MAX_FRAME_LEN),
        )
        .await
        .map_err(|_| RawError::Timeout)?
        .map_err(RawError::Frame)
    }

    /// Sends one request and reads the answer.
    pub async fn request(&self, id: u64, kind: RequestKind) -> Result<ServerFrame, RawError> {
        self.exchange(&request_bytes(id, kind)?).await
    }

    /// Whether the node has closed the connection, and why.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }

    /// Closes the connection and the endpoint.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(0), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

fn encode(frame: &ClientFrame) -> Result<Vec<u8>, RawError> {
    encode_frame(frame, DEFAULT_MAX_FRAME_LEN)
        .map(|b| b.to_vec())
        .map_err(|e| RawError::Setup(format!("cannot encode a frame: {e}")))
}

/// The bytes of a well-formed request frame.
pub fn request_bytes(id: u64, kind: RequestKind) -> Result<Vec<u8>, RawError> {
    encode(&ClientFrame::Request(ClientRequest { id, kind }))
}

/// A 4-byte big-endian length prefix followed by `body`, exactly as given.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}
