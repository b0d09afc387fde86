//! The readers' acknowledged positions and the dropped count, in one small file replaced
//! atomically (write, fsync, rename).

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    path::Path,
};

use serde::{Deserialize, Serialize};

use super::SpoolError;

const FILE: &str = "cursor.json";

/// Per reader, the last sequence number it delivered; and the dropped count.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursors {
    readers: BTreeMap<String, u64>,
    dropped: u64,
}

impl Cursors {
    pub(super) fn load(dir: &Path, readers: &[&str]) -> Result<Self, SpoolError> {
        let path = dir.join(FILE);
        let mut cursors = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Self>(&bytes)
                .map_err(|source| SpoolError::Cursor { path, source })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => return Err(SpoolError::io("reading", &path)(e)),
        };
        // A reader added since starts where the others are: it must not replay what was
        // already exported and removed (and cannot: those segments are gone).
        let start = cursors.readers.values().copied().min().unwrap_or(0);
        for r in readers {
            cursors.readers.entry((*r).to_owned()).or_insert(start);
        }
        cursors
            .readers
            .retain(|name, _| readers.contains(&name.as_str()));
        Ok(cursors)
    }

    pub(super) fn save(&self, dir: &Path) -> Result<(), SpoolError> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(SpoolError::Encode)?;
        let mut f = File::create(&tmp).map_err(SpoolError::io("writing", &tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_data())
            .map_err(SpoolError::io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(SpoolError::io("replacing", &path))
    }

    pub(super) fn get(&self, reader: &str) -> Result<u64, SpoolError> {
        self.readers
            .get(reader)
            .copied()
            .ok_or_else(|| SpoolError::UnknownReader(reader.to_owned()))
    }

    pub(super) fn set(&mut self, reader: &str, seq: u64) -> Result<(), SpoolError> {
        let slot = self
            .readers
            .get_mut(reader)
            .ok_or_else(|| SpoolError::UnknownReader(reader.to_owned()))?;
        // Never backwards: a late acknowledgement of an older batch must not replay.
        *slot = (*slot).max(seq);
        Ok(())
    }

    /// Moves every reader that is behind `seq` up to it (those records are gone).
    pub(super) fn skip_to(&mut self, seq: u64) {
        for v in self.readers.values_mut() {
            *v = (*v).max(seq);
        }
    }

    pub(super) fn lowest(&self) -> u64 {
        self.readers.values().copied().min().unwrap_or(0)
    }

    pub(super) fn highest(&self) -> u64 {
        self.readers.values().copied().max().unwrap_or(0)
    }

    pub(super) fn add_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Undoes [`Self::add_dropped`] when the count could not be saved.
    pub(super) fn take_back_dropped(&mut self, n: u64) {
        self.dropped = self.dropped.saturating_sub(n);
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped
    }
}
