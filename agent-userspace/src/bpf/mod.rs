//! The eBPF side as user space sees it: the embedded object, loading and attaching it to the
//! cages' parent cgroup, pinning for lasting enforcement, and typed access to its maps.

mod approvals;
mod loader;
mod maps;

pub use approvals::ApprovalMap;
pub use loader::{ensure_bpffs, release_pinned, AttachedPrograms, ProgramKind, PROGRAMS};
pub use maps::{EgressMaps, SlotEntries};

use std::{io, path::PathBuf};

/// Errors of loading, attaching and map access.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The embedded object could not be loaded (verifier or kernel refusal).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded or attached.
    #[error("program {name}: {source}")]
    Program {
        /// The program's name.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program expected in the object is missing or of the wrong type.
    #[error("program {0} is missing from the eBPF object or has the wrong type")]
    MissingProgram(&'static str),
    /// A map expected in the object is missing or of the wrong type.
    #[error("map {name}: {what}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What went wrong.
        what: String,
    },
    /// Pinning or unpinning a link failed.
    #[error("pinning {path}: {what}")]
    Pin {
        /// The bpffs path.
        path: PathBuf,
        /// What went wrong.
        what: String,
    },
    /// A file operation (bpffs mount, pin directory, cgroup) failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The policy holds more entries than the maps can.
    #[error("policy does not fit the kernel maps: {0}")]
    Capacity(String),
}

/// The embedded eBPF object, built by build.rs from agent-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));
