//! Encryption at rest: the volume's RSA key, the volume secret it seals,
//! and the AES-256-GCM sealing of each block under a data key of its own.
//!
//! Three layers:
//! * the **volume key**, an RSA private key the user holds (`format
//!   --encrypt-key FILE`, passphrase from `TESSERA_KEY_PASSPHRASE`). The
//!   settings keep its fingerprint and, when a passphrase protects it, the
//!   key itself as an encrypted PKCS#8 PEM, so that mounts need only the
//!   passphrase (as JuiceFS mounts do);
//! * the **volume secret**, 32 random bytes made at format and stored only
//!   sealed by the volume key (RSA-OAEP with SHA-256);
//! * a **data key** per block, 32 random bytes, sealed by the volume secret
//!   (AES-256-GCM) into the block's header; the block is sealed by it
//!   (AES-256-GCM). The block's object key is the associated data both
//!   times, so a block copied over another key, or into another volume,
//!   does not open.
//!
//! One RSA operation per mount, not per block: a block costs one AES-GCM
//! pass over its bytes and one over 32. Fresh keys and random 96-bit nonces
//! per block leave no nonce-reuse bound to watch.

use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// The name the settings give this scheme.
pub const ALGORITHM: &str = "aes256gcm-rsa-oaep-sha256";
/// The smallest RSA key accepted.
pub const MIN_KEY_BITS: usize = 2048;

const MAGIC: &[u8; 4] = b"TSE1";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const WRAPPED_LEN: usize = KEY_LEN + TAG_LEN;
const HEADER_LEN: usize = MAGIC.len() + NONCE_LEN + WRAPPED_LEN + NONCE_LEN;
/// Bytes a sealed block has beyond its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Why a key, a secret or a block could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("not an RSA private key in PEM form ({0})")]
    NotAKey(String),
    #[error("the key is protected by a passphrase: set TESSERA_KEY_PASSPHRASE")]
    NeedPassphrase,
    #[error("cannot decrypt the key: wrong passphrase (or a damaged key)")]
    WrongPassphrase,
    #[error(
        "an OpenSSL traditional encrypted key (Proc-Type: 4,ENCRYPTED) is not supported: \
         convert it with `openssl pkcs8 -topk8 -in KEY -out KEY.p8`"
    )]
    LegacyEncryptedPem,
    #[error("the RSA key has {0} bits: use {MIN_KEY_BITS} or more")]
    KeyTooSmall(usize),
    #[error("this is not the volume's key (the volume's is {expected}, this one is {got})")]
    WrongKey { expected: String, got: String },
    #[error("the volume secret does not open with this key (damaged settings?)")]
    SecretSealed,
    #[error("the volume is encrypted with {0:?}, which this binary does not know")]
    Unsupported(String),
    #[error("encrypted block: {0}")]
    Damaged(&'static str),
    #[error("cryptography failed: {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, CryptError>;

/// A volume's RSA private key.
pub struct VolumeKey {
    private: RsaPrivateKey,
}

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeKey({})", self.fingerprint())
    }
}

impl VolumeKey {
    /// Read a PEM private key: PKCS#1 (`RSA PRIVATE KEY`), PKCS#8
    /// (`PRIVATE KEY`) or passphrase-protected PKCS#8 (`ENCRYPTED PRIVATE
    /// KEY`, which needs `passphrase`).
    pub fn from_pem(pem: &str, passphrase: Option<&str>) -> Result<VolumeKey> {
        let pem = pem.trim();
        if pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(CryptError::LegacyEncryptedPem);
        }
        let private = if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            let pass = passphrase.ok_or(CryptError::NeedPassphrase)?;
            RsaPrivateKey::from_pkcs8_encrypted_pem(pem, pass.as_bytes())
                .map_err(|_| CryptError::WrongPassphrase)?
        } else if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| CryptError::NotAKey(e.to_string()))?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| CryptError::NotAKey(e.to_string()))?
        } else {
            return Err(CryptError::NotAKey("no PEM private key block found".into()));
        };
        private
            .validate()
            .map_err(|e| CryptError::NotAKey(e.to_string()))?;
        let bits = private.size() * 8;
        if bits < MIN_KEY_BITS {
            return Err(CryptError::KeyTooSmall(bits));
        }
        Ok(VolumeKey { private })
    }

    /// A new key (tests and tools).
    pub fn generate(bits: usize) -> Result<VolumeKey> {
        let private = RsaPrivateKey::new(&mut OsRng, bits)
            .map_err(|e| CryptError::Internal(e.to_string()))?;
        Ok(VolumeKey { private })
    }

    /// `SHA256:` and the hex SHA-256 of the public key (PKCS#1 DER): what
    /// the settings keep to tell the right key from another.
    pub fn fingerprint(&self) -> String {
        let der = self
            .private
            .to_public_key()
            .to_pkcs1_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        format!("SHA256:{}", hex(&Sha256::digest(&der)))
    }

    /// The key as a passphrase-protected PKCS#8 PEM.
    pub fn to_encrypted_pem(&self, passphrase: &str) -> Result<String> {
        self.private
            .to_pkcs8_encrypted_pem(&mut OsRng, passphrase.as_bytes(), LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| CryptError::Internal(e.to_string()))
    }

    /// The key as a plain PKCS#8 PEM (tests and tools).
    pub fn to_pem(&self) -> Result<String> {
        self.private
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| CryptError::Internal(e.to_string()))
    }

    /// A new volume secret: the cipher over it, and the secret sealed for
    /// this key (hex) for the settings.
    pub fn new_secret(&self) -> Result<(BlockCipher, String)> {
        let mut secret = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| CryptError::Internal("no randomness".into()))?;
        let sealed = self
            .private
            .to_public_key()
            .encrypt(&mut OsRng, Oaep::new::<Sha256>(), &secret)
            .map_err(|e| CryptError::Internal(e.to_string()))?;
        Ok((BlockCipher::new(&secret)?, hex(&sealed)))
    }

    /// Open the sealed volume secret (hex) of the settings.
    pub fn unlock(&self, sealed_hex: &str) -> Result<BlockCipher> {
        let sealed = unhex(sealed_hex).ok_or(CryptError::SecretSealed)?;
        let secret = self
            .private
            .decrypt(Oaep::new::<Sha256>(), &sealed)
            .map_err(|_| CryptError::SecretSealed)?;
        if secret.len() != KEY_LEN {
            return Err(CryptError::SecretSealed);
        }
        BlockCipher::new(&secret)
    }

    /// Check that this is the key with `fingerprint`.
    pub fn check_fingerprint(&self, fingerprint: &str) -> Result<()> {
        let got = self.fingerprint();
        if got == fingerprint {
            Ok(())
        } else {
            Err(CryptError::WrongKey {
                expected: fingerprint.to_string(),
                got,
            })
        }
    }
}

/// Seals and opens blocks under the volume secret.
pub struct BlockCipher {
    secret: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCipher(AES-256-GCM)")
    }
}

impl BlockCipher {
    fn new(secret: &[u8]) -> Result<BlockCipher> {
        Ok(BlockCipher {
            secret: aead_key(secret)?,
            random: SystemRandom::new(),
        })
    }

    fn random<const N: usize>(&self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.random
            .fill(&mut b)
            .map_err(|_| CryptError::Internal("no randomness".into()))?;
        Ok(b)
    }

    /// `data` sealed under a fresh data key, bound to `aad` (the object
    /// key): header, ciphertext, tag.
    pub fn seal(&self, aad: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let data_key: [u8; KEY_LEN] = self.random()?;
        let wrap_nonce: [u8; NONCE_LEN] = self.random()?;
        let body_nonce: [u8; NONCE_LEN] = self.random()?;
        let mut out = Vec::with_capacity(data.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&wrap_nonce);
        let at = out.len();
        out.extend_from_slice(&data_key);
        let tag = self
            .secret
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(wrap_nonce),
                Aad::from(aad),
                &mut out[at..],
            )
            .map_err(|_| CryptError::Internal("sealing the data key".into()))?;
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(&body_nonce);
        let at = out.len();
        out.extend_from_slice(data);
        let tag = aead_key(&data_key)?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(body_nonce),
                Aad::from(aad),
                &mut out[at..],
            )
            .map_err(|_| CryptError::Internal("sealing the block".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext of a block sealed by [`BlockCipher::seal`] with the
    /// same `aad`; an error for any other key, object key or changed byte.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return Err(CryptError::Damaged("shorter than its header"));
        }
        let (header, body) = sealed.split_at(HEADER_LEN);
        if &header[..MAGIC.len()] != MAGIC {
            return Err(CryptError::Damaged(
                "no encryption header (written unencrypted?)",
            ));
        }
        let nonce_at = |at: usize| -> Result<Nonce> {
            let n: [u8; NONCE_LEN] = header[at..at + NONCE_LEN]
                .try_into()
                .map_err(|_| CryptError::Damaged("header"))?;
            Ok(Nonce::assume_unique_for_key(n))
        };
        let wrap_nonce = nonce_at(MAGIC.len())?;
        let wrapped_at = MAGIC.len() + NONCE_LEN;
        let mut wrapped = header[wrapped_at..wrapped_at + WRAPPED_LEN].to_vec();
        let data_key = self
            .secret
            .open_in_place(wrap_nonce, Aad::from(aad), &mut wrapped)
            .map_err(|_| {
                CryptError::Damaged("its data key does not open (another volume's key or object)")
            })?;
        let key = aead_key(data_key)?;
        let body_nonce = nonce_at(wrapped_at + WRAPPED_LEN)?;
        let mut plain = body.to_vec();
        let n = key
            .open_in_place(body_nonce, Aad::from(aad), &mut plain)
            .map_err(|_| CryptError::Damaged("its bytes fail authentication (changed in storage)"))?
            .len();
        plain.truncate(n);
        Ok(plain)
    }
}

/// Whether `data` starts as a sealed block does (a cheap guess, for
/// telling encrypted backups from plain ones; opening is the proof).
pub fn looks_sealed(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CryptError::Internal("AES-256 key of the wrong length".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use std::sync::OnceLock;

    fn key() -> &'static VolumeKey {
        static KEY: OnceLock<VolumeKey> = OnceLock::new();
        KEY.get_or_init(|| VolumeKey::generate(2048).expect("keygen"))
    }

    #[test]
    fn blocks_round_trip_and_any_change_is_refused() {
        let (cipher, sealed_secret) = key().new_secret().expect("secret");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sealed = cipher
            .seal(b"vol/chunks/0/1_0_100000", &data)
            .expect("seal");
        assert_eq!(sealed.len(), data.len() + OVERHEAD);
        assert!(
            !sealed.windows(64).any(|w| w == &data[1000..1064]),
            "plaintext shows through"
        );
        assert_eq!(
            cipher
                .open(b"vol/chunks/0/1_0_100000", &sealed)
                .expect("open"),
            data
        );
        // The same secret, unsealed again from the settings, opens it.
        let again = key().unlock(&sealed_secret).expect("unlock");
        assert_eq!(
            again
                .open(b"vol/chunks/0/1_0_100000", &sealed)
                .expect("open"),
            data
        );
        // Every byte matters: header, data key, body, tag.
        for at in [0, 5, 20, 70, 100, 5000, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 0x40;
            let err = cipher
                .open(b"vol/chunks/0/1_0_100000", &bad)
                .expect_err("tampered");
            assert!(matches!(err, CryptError::Damaged(_)), "{at}: {err}");
        }
        // Another object key, or another volume's secret, does not open it.
        assert!(cipher.open(b"vol/chunks/0/2_0_100000", &sealed).is_err());
        let (other, _) = key().new_secret().expect("another secret");
        assert!(other.open(b"vol/chunks/0/1_0_100000", &sealed).is_err());
        assert!(cipher.open(b"k", &data[..10]).is_err());
        assert!(cipher.open(b"k", &data).is_err(), "plaintext is refused");
    }

    #[test]
    fn keys_load_from_every_pem_form_and_bad_ones_are_named() {
        let plain = key().to_pem().expect("pem");
        let loaded = VolumeKey::from_pem(&plain, None).expect("pkcs8");
        assert_eq!(loaded.fingerprint(), key().fingerprint());
        loaded
            .check_fingerprint(&key().fingerprint())
            .expect("same key");

        let locked = key().to_encrypted_pem("open sesame").expect("encrypt");
        assert!(locked.contains("ENCRYPTED PRIVATE KEY"));
        assert!(matches!(
            VolumeKey::from_pem(&locked, None),
            Err(CryptError::NeedPassphrase)
        ));
        assert!(matches!(
            VolumeKey::from_pem(&locked, Some("wrong")),
            Err(CryptError::WrongPassphrase)
        ));
        let unlocked = VolumeKey::from_pem(&locked, Some("open sesame")).expect("decrypt");
        assert_eq!(unlocked.fingerprint(), key().fingerprint());

        let pkcs1 = key()
            .private
            .to_pkcs1_pem(LineEnding::LF)
            .expect("pkcs1")
            .to_string();
        VolumeKey::from_pem(&pkcs1, None).expect("pkcs1 loads");

        let err = VolumeKey::from_pem("hello, world", None).expect_err("not a key");
        assert!(err.to_string().contains("not an RSA private key"), "{err}");
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n";
        assert!(matches!(
            VolumeKey::from_pem(legacy, Some("x")),
            Err(CryptError::LegacyEncryptedPem)
        ));

        let other = VolumeKey::generate(2048).expect("keygen");
        let err = other
            .check_fingerprint(&key().fingerprint())
            .expect_err("another key");
        assert!(err.to_string().contains("not the volume's key"), "{err}");
        let (_, sealed) = key().new_secret().expect("secret");
        assert!(matches!(
            other.unlock(&sealed),
            Err(CryptError::SecretSealed)
        ));
        assert!(matches!(
            VolumeKey::generate(1024).and_then(|k| VolumeKey::from_pem(&k.to_pem()?, None)),
            Err(CryptError::KeyTooSmall(1024))
        ));
    }
}
