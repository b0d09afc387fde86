//! Session recordings: asciicast v2 files of what an agent's terminal showed (and, when asked,
//! what the operator typed), written by `agentcage run`; and the daemon's side of recordings
//! the policy requires (`record: always`).

pub mod asciicast;
mod store;

pub use asciicast::{Header, Recorder};
pub use store::{
    live, LiveRecording, RecordingError, RecordingGrant, RecordingStore, SNAPSHOT_TAIL,
};
