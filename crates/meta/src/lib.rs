//! Tessera's metadata: one schema, written once, over a transactional
//! key-value trait.
//!
//! * [`kv`] defines the trait every engine implements ([`KvEngine`]).
//! * [`engines`] holds the engines (in-memory for tests, SQLite embedded).
//! * [`keys`] and [`attr`] own the binary layout of keys and values.
//! * [`Meta`] (in `fs.rs`) implements every file-system operation on top.
//! * [`conformance`] is the suite every engine must pass.

pub mod acl;
pub mod attr;
pub mod backup;
mod check;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod dump;
pub mod engines;
mod fs;
mod group;
pub mod keys;
pub mod kv;
mod locks;
mod session;
pub mod slice;

use serde::{Deserialize, Serialize};

pub use attr::{Attr, FileType};
pub use check::FsckReport;
pub use fs::{
    Appended, CloneReport, DirWithRecords, Entry, ExternalObject, LazyImport, Meta, MetaConfig,
    Quota, QuotaCheck, RemoveReport, SetAttr, StatFs, TruncateResult, UnlinkResult, TRASH_INO,
    TRASH_NAME,
};
pub use group::MemberRecord;
pub use kv::{KvEngine, KvTxn};
pub use locks::{FlockType, PosixLock};
pub use session::SessionInfo;
pub use slice::{SliceKind, SliceRecord, VisibleSegment};

/// Inode number. 1 is the root.
pub type Ino = u64;
pub const ROOT_INO: Ino = 1;
/// Logical size of a chunk: a file is a sequence of 64 MiB chunks.
pub const CHUNK_SIZE: u64 = 64 << 20;
/// The largest file the format can hold: 2^32 chunks (a chunk index is a
/// u32) of 64 MiB, 256 PiB. Every offset, length and end that reaches the
/// metadata is checked against it (EFBIG beyond).
pub const MAX_FILE_SIZE: u64 = CHUNK_SIZE << 32;
/// Longest name of a directory entry, as on ext4.
pub const MAX_NAME_LEN: usize = 255;

/// Errors at the metadata boundary. Each maps to one errno.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("operation not permitted")]
    Perm,
    #[error("permission denied")]
    Access,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no such attribute")]
    NoData,
    #[error("attribute value too large")]
    TooBig,
    #[error("file too large: the format holds files of up to 256 PiB")]
    FileTooBig,
    #[error("result does not fit the buffer")]
    Range,
    #[error("disk quota exceeded (the quota of directory inode {0})")]
    QuotaExceeded(Ino),
    #[error("no space left: the volume's capacity or inode limit is reached")]
    NoSpace,
    #[error("resource temporarily unavailable")]
    WouldBlock,
    #[error("read-only file system")]
    ReadOnly,
    #[error("transaction conflict after {0} attempts")]
    Conflict(u32),
    #[error("the volume is not formatted: run `tessera format` first")]
    NotFormatted,
    #[error("{0}")]
    Format(String),
    #[error("metadata engine error: {0}")]
    Engine(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("invalid metadata URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl MetaError {
    /// The errno a system call should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::NotFound => libc::ENOENT,
            MetaError::Exists => libc::EEXIST,
            MetaError::NotDir => libc::ENOTDIR,
            MetaError::IsDir => libc::EISDIR,
            MetaError::NotEmpty => libc::ENOTEMPTY,
            MetaError::Perm => libc::EPERM,
            MetaError::Access => libc::EACCES,
            MetaError::NameTooLong => libc::ENAMETOOLONG,
            MetaError::Invalid(_) => libc::EINVAL,
            MetaError::NoData => libc::ENODATA,
            MetaError::TooBig => libc::E2BIG,
            MetaError::FileTooBig => libc::EFBIG,
            MetaError::QuotaExceeded(_) => libc::EDQUOT,
            MetaError::NoSpace => libc::ENOSPC,
            MetaError::Range => libc::ERANGE,
            MetaError::WouldBlock => libc::EAGAIN,
            MetaError::ReadOnly => libc::EROFS,
            _ => libc::EIO,
        }
    }

    /// Errors that a retry of the whole transaction may cure.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetaError::Conflict(_))
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// Caller identity for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask, applied to a node it creates unless the
    /// directory has a default ACL (which replaces it).
    pub umask: u32,
}

impl Ctx {
    pub const ROOT: Ctx = Ctx {
        uid: 0,
        gid: 0,
        pid: 0,
        umask: 0,
    };
}

/// Block compression of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: use none, lz4 or zstd"
            )),
        }
    }
}

/// The settings of a volume, stored in the engine and mirrored to the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    pub name: String,
    pub uuid: String,
    pub storage: String,
    /// Block size in bytes.
    pub block_size: u32,
    pub compression: Compression,
    pub trash_days: u32,
    /// Capacity reported by statfs, bytes; 0 means unlimited.
    pub capacity: u64,
    /// Inode limit reported by statfs; 0 means unlimited.
    pub inodes: u64,
    /// Layout version, bumped on incompatible changes.
    pub version: u32,
    /// POSIX ACLs are kept and enforced (mounts take FUSE_POSIX_ACL).
    /// Once on, never off: turning it off would silently widen access to
    /// every file an ACL narrows.
    #[serde(default)]
    pub acl: bool,
    /// Bandwidth limits every mount takes unless its `--upload-limit` or
    /// `--download-limit` says otherwise, in kbit/s (0: none).
    #[serde(default)]
    pub upload_limit_kbps: u64,
    #[serde(default)]
    pub download_limit_kbps: u64,
    /// Encryption at rest (`format --encrypt-key`); fixed at format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The object store's endpoint and region the volume was formatted
    /// with (never its credentials): every command that is given none of
    /// its own, by flag or environment, reaches the same store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub virtual_host_style: bool,
}

/// How a volume's blocks are encrypted: what the settings keep of the
/// volume key (never the key in clear; see `tessera-crypt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// The scheme, `tessera_crypt::ALGORITHM`.
    pub algorithm: String,
    /// Fingerprint of the RSA key: a wrong key is refused by it.
    pub key_fingerprint: String,
    /// The volume secret sealed by the RSA key (hex).
    pub sealed_secret: String,
    /// The RSA key as a passphrase-protected PKCS#8 PEM, when format was
    /// given a passphrase: mounts then need only the passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

impl Format {
    /// Layout versions: 1, block objects are the (compressed) bytes alone;
    /// 2, every block object is sealed with a checksum trailer bound to
    /// the volume's UUID and the block key.
    pub const VERSION: u32 = 2;

    /// Whether the volume's block objects carry a checksum trailer.
    pub fn sealed_blocks(&self) -> bool {
        self.version >= 2
    }

    /// Settings that may not change once data is written.
    pub fn incompatible_with(&self, other: &Format) -> Option<String> {
        let mut diffs = Vec::new();
        if self.name != other.name {
            diffs.push(format!("name {:?} vs {:?}", self.name, other.name));
        }
        if self.storage != other.storage {
            diffs.push(format!("storage {:?} vs {:?}", self.storage, other.storage));
        }
        if self.block_size != other.block_size {
            diffs.push(format!(
                "block size {} vs {}",
                self.block_size, other.block_size
            ));
        }
        if self.compression != other.compression {
            diffs.push(format!(
                "compression {:?} vs {:?}",
                self.compression, other.compression
            ));
        }
        let fingerprint = |f: &Format| f.encryption.as_ref().map(|e| e.key_fingerprint.clone());
        if fingerprint(self) != fingerprint(other) {
            diffs.push(match fingerprint(self) {
                Some(fp) => format!("encrypted with key {fp}"),
                None => "not encrypted".into(),
            });
        }
        if diffs.is_empty() {
            None
        } else {
            Some(diffs.join(", "))
        }
    }
}

/// Open an engine from a metadata URL.
pub fn open_engine(url: &str) -> Result<std::sync::Arc<dyn KvEngine>> {
    engines::open(url, false)
}

/// Open an engine from a metadata URL, creating an SQLite database file
/// that does not exist yet (for `format` and `load`).
pub fn create_engine(url: &str) -> Result<std::sync::Arc<dyn KvEngine>> {
    engines::open(url, true)
}

/// Seconds and nanoseconds since the epoch.
pub fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}
