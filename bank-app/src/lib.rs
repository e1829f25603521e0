//! The replicated bank application.
//!
//! This crate owns the bank's deterministic state machine ([`Bank`]), the encoding of
//! the commands it applies ([`Request`], [`Response`]) and the client sessions that
//! make retries safe ([`session`]). Raft sees only opaque bytes: a command is
//! [`Request::encode`]d, proposed, committed, and handed to [`Bank::apply`] on every
//! node, which answers with an encoded [`Response`].
//!
//! Reads (balance, statement) are not commands: they are answered from local state
//! once the node has confirmed, through Raft, that its state is current.
//!
//! Clients reach the bank over the client channel: [`protocol`] defines its frames,
//! [`server`] is the node side (run by the gateway next to the Raft sidecar),
//! [`client`] the async client library used by the `bank` CLI, and [`tls`] the
//! certificate rules of the channel.
#![warn(missing_docs)]

pub mod account;
pub mod client;
pub mod command;
pub mod protocol;
pub mod replica;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;

pub use account::{Account, Txn, TxnKind};
pub use client::{Client, ClientConfig, ClientError};
pub use command::{
    validate_amount, AccountId, CodecError, Op, Rejection, Request, Response, SessionRef,
    COMMAND_FORMAT_VERSION, MAX_AMOUNT,
};
pub use replica::BankReplica;
pub use server::{BankServer, ServerConfig, ServerError};
pub use session::SessionInfo;
pub use state::{Bank, BankConfig, BankError, SNAPSHOT_FORMAT_VERSION};
