//! Helpers for the cross-process integration and chaos tests in `tests/tests/`.
//!
//! The tests start real `gateway run` processes (through [`gateway::LocalCluster`]),
//! talk to them with the bank client library and with raw client-channel frames, and
//! break them: SIGKILL, SIGSTOP, restarts, and cuts of the Raft channel made by UDP
//! relays that sit between the nodes. This crate holds what the tests share:
//!
//! * [`binary`]: where the `gateway` binary built by `cargo build --bins` is.
//! * [`harness`]: a cluster of fast-timed nodes plus a tokio runtime, with log dumps
//!   when a test fails.
//! * [`relay`]: controllable UDP relays for the Raft channel.
//! * [`raw`]: raw client-channel connections, for bad-input and redirect checks.
//! * [`workload`]: concurrent bank clients that record every outcome, and the model
//!   that checks final balances against the acknowledged operations.
//! * [`wait`]: polling with deadlines.
#![warn(missing_docs)]

pub mod binary;
pub mod harness;
pub mod raw;
pub mod relay;
pub mod wait;
pub mod workload;
