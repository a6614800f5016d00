//! The seal a WAL leaves when it is closed cleanly.
//!
//! An SD card may acknowledge an fsync and still lose the write when the
//! power goes. A start without a seal, or with one that does not match what
//! recovery found, may lack events at the end of its own log that peers
//! hold: the node warns. It does not decide the log epoch: every start
//! writes a new log at its first local write (`Wal::set_unconfirmed_tail`),
//! since a disk image put back carries a matching seal too.
//!
//! The seal is written after the writer's last fsync and removed at open
//! before anything else is written, so it only ever describes the state the
//! WAL was closed in.

use crate::{sync_dir, WalError};
use ferry_proto::{NodeId, Origin};
use std::io::Write;
use std::path::Path;

const FILE: &str = "SEALED";
const MAGIC: &str = "ferry-wal-seal 1";

/// What a clean close left: the durable bytes and the own log's last seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seal {
    pub origin: Origin,
    pub last: u64,
    pub bytes: u64,
}

impl Seal {
    fn encode(&self) -> String {
        format!(
            "{MAGIC}\n{} {:08x} {} {}\n",
            hex(&self.origin.node.0),
            self.origin.epoch,
            self.last,
            self.bytes
        )
    }

    fn decode(text: &str) -> Option<Seal> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut f = lines.next()?.split(' ');
        let node = unhex(f.next()?)?;
        let epoch = u32::from_str_radix(f.next()?, 16).ok()?;
        let last = f.next()?.parse().ok()?;
        let bytes = f.next()?.parse().ok()?;
        Some(Seal {
            origin: Origin {
                node: NodeId(node),
                epoch,
            },
            last,
            bytes,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes the seal durably (temporary file, fsync, rename, directory fsync).
pub(crate) fn write(dir: &Path, seal: &Seal) -> Result<(), WalError> {
    let tmp = dir.join("SEALED.tmp");
    let mut f = crate::perms::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| WalError::io("create seal", &tmp, e))?;
    f.write_all(seal.encode().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| WalError::io("write seal", &tmp, e))?;
    let path = dir.join(FILE);
    std::fs::rename(&tmp, &path).map_err(|e| WalError::io("install seal", &path, e))?;
    sync_dir(dir)
}

/// Reads and removes the seal: from now on the WAL is open, not sealed.
/// An unreadable seal counts as none.
pub(crate) fn take(dir: &Path) -> Result<Option<Seal>, WalError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WalError::io("read seal", &path, e)),
    };
    std::fs::remove_file(&path).map_err(|e| WalError::io("remove seal", &path, e))?;
    sync_dir(dir)?;
    let seal = Seal::decode(&text);
    if seal.is_none() {
        tracing::warn!(path = %path.display(), "ignoring an unreadable WAL seal");
    }
    Ok(seal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_reads_back_and_garbage_is_none() {
        let s = Seal {
            origin: Origin {
                node: NodeId([7; 16]),
                epoch: 0xdead_beef,
            },
            last: 42,
            bytes: 123_456,
        };
        assert_eq!(Seal::decode(&s.encode()), Some(s));
        assert_eq!(Seal::decode("ferry-wal-seal 1\nzz 1 2 3\n"), None);
        assert_eq!(Seal::decode(""), None);
    }
}
