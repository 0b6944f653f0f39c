//! What every CSI call checks: required fields, the volume capability, the
//! volume behind a metadata URL; and the gRPC statuses they answer with.

use tonic::Status;

use crate::proto::{volume_capability, VolumeCapability};

pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg)
}

pub fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// A mount capability (block volumes are not offered), its access mode
/// saying whether the volume may only be read.
pub fn mount_capability(cap: Option<&VolumeCapability>) -> Result<bool, Status> {
    let cap = cap.ok_or_else(|| invalid("volume_capability is missing"))?;
    match cap.access_type {
        Some(volume_capability::AccessType::Mount(_)) => {}
        Some(volume_capability::AccessType::Block(_)) => {
            return Err(invalid(
                "block volumes are not offered: Tessera volumes are file systems",
            ))
        }
        None => return Err(invalid("volume_capability names no access type")),
    }
    use volume_capability::access_mode::Mode;
    let mode = cap.access_mode.as_ref().map(|m| m.mode());
    Ok(matches!(
        mode,
        Some(Mode::SingleNodeReaderOnly) | Some(Mode::MultiNodeReaderOnly)
    ))
}

pub fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(invalid(format!("{field} is missing")))
    } else {
        Ok(value)
    }
}

/// Secret keys a volume's Secret may hold, and the environment variable of
/// the mount process each one becomes (`metaurl` is its first argument).
pub const SECRET_ENV: &[(&str, &str)] = &[
    ("access-key", "AWS_ACCESS_KEY_ID"),
    ("secret-key", "AWS_SECRET_ACCESS_KEY"),
    ("endpoint", "AWS_ENDPOINT_URL"),
    ("region", "AWS_REGION"),
    ("key-passphrase", "TESSERA_KEY_PASSPHRASE"),
];

/// The metadata URL in a volume's Secret; INVALID_ARGUMENT for a Secret
/// without one or with keys that mean nothing here.
pub fn meta_url_of(secrets: &std::collections::HashMap<String, String>) -> Result<String, Status> {
    let unknown: Vec<&str> = secrets
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "metaurl" && !SECRET_ENV.iter().any(|(s, _)| s == k))
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "unknown secret keys {unknown:?}: a volume's Secret may hold metaurl, {}",
            SECRET_ENV
                .iter()
                .map(|s| s.0)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    secrets
        .get("metaurl")
        .filter(|u| !u.is_empty())
        .cloned()
        .ok_or_else(|| invalid("the volume's Secret has no metaurl"))
}

/// NOT_FOUND when no volume is formatted at `meta_url`.
pub fn check_volume(meta_url: &str) -> Result<(), Status> {
    open_volume(meta_url).map(drop)
}

/// The volume at `meta_url`, loaded; NOT_FOUND when none is formatted
/// there.
pub fn open_volume(meta_url: &str) -> Result<tessera_meta::Meta, Status> {
    let engine = tessera_meta::open_engine(meta_url).map_err(|e| match e {
        tessera_meta::MetaError::NotFormatted => Status::not_found(format!(
            "no volume at {}",
            tessera_meta::engines::redact(meta_url)
        )),
        e => Status::unavailable(format!("metadata engine: {e}")),
    })?;
    let meta = tessera_meta::Meta::new(engine, Default::default());
    match meta.load() {
        Ok(_) => Ok(meta),
        Err(tessera_meta::MetaError::NotFormatted) => Err(Status::not_found(format!(
            "no volume is formatted at {}",
            tessera_meta::engines::redact(meta_url)
        ))),
        Err(e) => Err(Status::unavailable(format!("metadata engine: {e}"))),
    }
}
