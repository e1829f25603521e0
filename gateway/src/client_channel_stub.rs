//! TEMPORARY STAND-IN for `bank_app::server` until the client channel branch is
//! merged. DELETE THIS FILE at merge time (and its `mod` line in `lib.rs`), then point
//! the `use` in `node.rs::start_client_channel` at `bank_app::server`.
//!
//! It has the exact signatures of the real module. It does not speak the bank
//! protocol: it only holds the client UDP port, so that the rest of the gateway
//! (addresses, shutdown order, tests of the port layout) behaves as it will.

use std::net::SocketAddr;

use bank_app::BankReplica;
use raft::sidecar::RaftHandle;

/// Mirrors `bank_app::server::ServerConfig`.
#[derive(Clone)]
pub struct ServerConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The node's certificate chain, PEM.
    pub cert_chain_pem: String,
    /// The node's private key, PEM.
    pub key_pem: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The token clients must present, if any.
    pub token: Option<String>,
    /// Largest frame accepted.
    pub max_frame_len: usize,
}

/// Mirrors `bank_app::server::ServerError`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding failed.
    #[error("cannot bind the client channel: {0}")]
    Io(#[from] std::io::Error),
}

/// Mirrors `bank_app::server::BankServer`.
pub struct BankServer {
    local_addr: SocketAddr,
    socket: std::sync::Mutex<Option<std::net::UdpSocket>>,
    _raft: RaftHandle,
    _bank: BankReplica,
}

impl BankServer {
    /// Binds the port; serves nothing.
    pub async fn start(
        cfg: ServerConfig,
        raft: RaftHandle,
        bank: BankReplica,
    ) -> Result<BankServer, ServerError> {
        let socket = std::net::UdpSocket::bind(cfg.listen)?;
        Ok(BankServer {
            local_addr: socket.local_addr()?,
            socket: std::sync::Mutex::new(Some(socket)),
            _raft: raft,
            _bank: bank,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Releases the port.
    pub async fn shutdown(&self) {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
