//! The files of a cache directory: where blocks, local copies and the pin
//! table live under each volume's directory, and walks over them.

use std::path::Path;

/// Under a cache directory's volume directory: the cached blocks, the
/// whole-file local copies, and the pin table.
pub(crate) const RAW_DIR: &str = "raw";
pub(crate) const COPIES_DIR: &str = "files";
pub(crate) const PINS_FILE: &str = "pins";

/// A pins file: one `deadline key` line per pinned block; pins whose
/// deadline is not after `now` are left out.
pub(crate) fn read_pins(path: &Path, now: u64) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (until, key) = line.split_once(' ')?;
            let until: u64 = until.parse().ok()?;
            (until > now).then(|| (key.to_string(), until))
        })
        .collect()
}

/// Whether a file under a local-copies directory is a copy in progress
/// (`.{name}.tmp.{pid}`), which no quota counts.
pub fn is_temporary_copy(name: &str) -> bool {
    name.starts_with('.')
}

/// Bytes of the finished local copies under `dir` (a volume's `files/`, or
/// one file's directory in it).
pub fn copies_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    walk(dir, &mut |path, meta| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
        if !is_temporary_copy(name) {
            total += meta.len();
        }
    });
    total
}

/// Visit every regular file under `dir`, recursively.
pub(crate) fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            walk(&path, f);
        } else if meta.is_file() {
            f(&path, &meta);
        }
    }
}
