//! What the kernel captures about caged processes, put together in user space: each agent's
//! process tree (from fork, exec and exit events) and the content hash of every program
//! executed.

mod hashes;
mod tree;

pub use hashes::HashCache;
pub use tree::{render, ProcessNode, ProcessTree};
