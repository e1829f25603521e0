//! The per-node gateway: configuration, node wiring, admin HTTP, cluster bootstrap and
//! a local multi-process cluster for the demo and tests. The `gateway` binary is a
//! thin command-line layer over this library.
#![warn(missing_docs)]

pub mod admin;
pub mod admin_client;
pub mod cluster;
pub mod config;
pub mod init;
pub mod node;
pub mod status;

pub use cluster::{ClusterError, LocalCluster, LocalClusterOptions};
pub use config::{ConfigError, NodeConfig, Overrides};
pub use node::{Node, NodeError};
