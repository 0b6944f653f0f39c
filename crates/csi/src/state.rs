//! What the node plugin has mounted, kept in `STATE_DIR/state.json` (mode
//! 0600: it holds the volumes' credentials) and written whole after every
//! change, so that a restarted plugin knows its mounts.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::CsiError;

/// One `tessera mount` process: a volume with one option set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub meta_url: String,
    /// Mount flags after the metadata URL and mount point.
    pub args: Vec<String>,
    /// Environment of the process (storage credentials, key passphrase).
    pub env: Vec<(String, String)>,
    pub mountpoint: PathBuf,
}

/// A staging path: a bind of a shared mount (or of a directory in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub volume_id: String,
    pub shared: String,
    pub subdir: Option<String>,
}

/// A pod's target path: a bind of a staging path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub volume_id: String,
    pub staging: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub shared: BTreeMap<String, Shared>,
    pub staged: BTreeMap<PathBuf, Staged>,
    pub published: BTreeMap<PathBuf, Published>,
}

impl State {
    pub fn load(path: &Path) -> Result<State, CsiError> {
        match std::fs::read(path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| CsiError::State {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(CsiError::State {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        }
    }

    /// Write the state to a new file and rename it over the old one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let raw = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.new");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&raw)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Whether any staging path still uses shared mount `id`.
    pub fn in_use(&self, id: &str) -> bool {
        self.staged.values().any(|s| s.shared == id)
    }
}
