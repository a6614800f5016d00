//! WAL encryption keys: 32 random bytes in a file, identified by fingerprint.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

use crate::WalError;

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

#[derive(Clone)]
pub struct WalKey {
    bytes: [u8; 32],
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for WalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WalKey({})", hex(&self.fingerprint()))
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl WalKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        WalKey {
            bytes,
            cipher: ChaCha20Poly1305::new(&bytes.into()),
        }
    }

    /// Names the key in segment headers without revealing it.
    pub fn fingerprint(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"ferry-wal-key-fingerprint");
        h.update(self.bytes);
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&h.finalize()[..16]);
        fp
    }

    pub fn load(path: &Path) -> Result<Self, WalError> {
        let data = std::fs::read(path).map_err(|e| WalError::io("read key file", path, e))?;
        let bytes: [u8; 32] = data.as_slice().try_into().map_err(|_| WalError::BadKeyFile {
            path: path.to_path_buf(),
            len: data.len(),
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Writes the key with mode 0600, durably, refusing to overwrite.
    pub fn save_new(&self, path: &Path) -> Result<(), WalError> {
        let mut f = crate::perms::private_file()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| WalError::io("create key file", path, e))?;
        f.write_all(&self.bytes)
            .map_err(|e| WalError::io("write key file", path, e))?;
        f.sync_all().map_err(|e| WalError::io("sync key file", path, e))?;
        // The key must outlast a power cut once segments are sealed with it.
        match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => crate::sync_dir(dir),
            _ => crate::sync_dir(Path::new(".")),
        }
    }

    pub(crate) fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        // ChaCha20-Poly1305 encryption only fails for inputs beyond 256 GiB.
        self.cipher
            .encrypt(Nonce::from_slice(nonce), Payload { msg: plain, aad })
            .expect("chacha20poly1305 seal")
    }

    pub(crate) fn open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }
}

pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// The key new segments are written with (`None`: plaintext) and every key
/// that may still be found in older segments (during and after a rekey).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    pub current: Option<WalKey>,
    pub previous: Vec<WalKey>,
}

impl Keyring {
    pub fn plaintext() -> Self {
        Keyring::default()
    }

    pub fn single(key: WalKey) -> Self {
        Keyring {
            current: Some(key),
            previous: Vec::new(),
        }
    }

    pub(crate) fn find(&self, fp: &[u8; 16]) -> Option<&WalKey> {
        self.current
            .iter()
            .chain(self.previous.iter())
            .find(|k| &k.fingerprint() == fp)
    }
}
