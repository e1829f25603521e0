pub use raft as _raft;
