//! Volume keys for the commands that format, mount or restore an encrypted
//! volume: reading the RSA key file, the settings a new volume keeps of
//! it, and the block cipher a data path needs.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use tessera_meta::Format;

/// The environment variable that holds a volume key's passphrase.
pub const KEY_PASSPHRASE_ENV: &str = "TESSERA_KEY_PASSPHRASE";

fn key_passphrase() -> Option<String> {
    std::env::var(KEY_PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty())
}

/// Read the RSA key in `path` (its passphrase from the environment).
pub fn read_volume_key(path: &Path) -> Result<tessera_crypt::VolumeKey> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    tessera_crypt::VolumeKey::from_pem(&pem, key_passphrase().as_deref())
        .with_context(|| format!("key file {}", path.display()))
}

/// The encryption settings of a new volume: a new volume secret sealed by
/// `key`; the key itself kept in the settings only when a passphrase
/// protects it there. Formatting an encrypted volume again needs its key,
/// and keeps its secret.
pub fn new_encryption(
    key: &tessera_crypt::VolumeKey,
    existing: Option<&Format>,
) -> Result<tessera_meta::Encryption> {
    let key_pem = key_passphrase()
        .map(|p| key.to_encrypted_pem(&p))
        .transpose()?;
    if let Some(old) = existing.and_then(|f| f.encryption.as_ref()) {
        key.check_fingerprint(&old.key_fingerprint)?;
        return Ok(tessera_meta::Encryption {
            key_pem: key_pem.or_else(|| old.key_pem.clone()),
            ..old.clone()
        });
    }
    let (_, sealed_secret) = key.new_secret()?;
    Ok(tessera_meta::Encryption {
        algorithm: tessera_crypt::ALGORITHM.to_string(),
        key_fingerprint: key.fingerprint(),
        sealed_secret,
        key_pem,
    })
}

/// The block cipher of an encrypted volume (None for a plain one): the key
/// from `key_file`, else the one its settings keep, opened with the
/// passphrase in the environment; checked against the volume's fingerprint.
pub fn volume_cipher(
    format: &Format,
    key_file: Option<&Path>,
) -> Result<Option<Arc<tessera_crypt::BlockCipher>>> {
    let Some(enc) = &format.encryption else {
        if let Some(path) = key_file {
            return Err(anyhow!(
                "--encrypt-key {}: volume {:?} is not encrypted",
                path.display(),
                format.name
            ));
        }
        return Ok(None);
    };
    if enc.algorithm != tessera_crypt::ALGORITHM {
        return Err(tessera_crypt::CryptError::Unsupported(enc.algorithm.clone()).into());
    }
    let key = match (key_file, &enc.key_pem) {
        (Some(path), _) => read_volume_key(path)?,
        (None, Some(pem)) => {
            let pass = key_passphrase().ok_or_else(|| {
                anyhow!(
                    "volume {:?} is encrypted: set {KEY_PASSPHRASE_ENV} to its key's passphrase, \
                     or give --encrypt-key FILE",
                    format.name
                )
            })?;
            tessera_crypt::VolumeKey::from_pem(pem, Some(&pass))
                .with_context(|| format!("the key of volume {:?}", format.name))?
        }
        (None, None) => {
            return Err(anyhow!(
                "volume {:?} is encrypted and its settings keep no key: give --encrypt-key FILE",
                format.name
            ))
        }
    };
    key.check_fingerprint(&enc.key_fingerprint)?;
    Ok(Some(Arc::new(key.unlock(&enc.sealed_secret)?)))
}
