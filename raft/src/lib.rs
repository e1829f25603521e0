//! A Raft consensus library built to run as a sidecar inside an application.
//!
//! * [`core`]: the deterministic, sans-IO Raft state machine.
//! * [`storage`]: the durable log (in memory and on redb).
//! * [`transport`]: the peer channel (in memory and over QUIC with mutual TLS).
//! * `sim` (feature `sim`): a deterministic cluster simulator for tests.
#![warn(missing_docs)]

pub mod core;
pub mod sidecar;
#[cfg(feature = "sim")]
pub mod sim;
pub mod storage;
pub mod transport;
