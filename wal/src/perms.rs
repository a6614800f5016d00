//! File modes: everything the WAL writes is private to the user ferry runs
//! as. Segments hold encrypted events, but their sizes, times and the clear
//! origin and seq of each record are still nobody else's business.

use crate::WalError;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Options that create a file with `FILE_MODE` (the umask may only remove
/// bits).
pub fn private_file() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates `dir` and any missing parents with `DIR_MODE`.
pub fn create_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| WalError::io("create WAL directory", dir, e))
}

/// Takes group and other permissions off a file or directory an older build
/// created. Failing to (another owner) is logged, not fatal: the WAL still
/// works, and the warning says what to fix.
pub fn tighten(path: &Path, mode: u32) {
    let current = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o777,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read permissions");
            return;
        }
    };
    let wanted = current & mode;
    if wanted == current {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted)) {
        Ok(()) => tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{wanted:o}"),
            "made private: WAL files are readable only by the user ferry runs as"),
        Err(e) => tracing::warn!(path = %path.display(), mode = format!("{current:o}"), error = %e,
            "readable by other users and cannot be changed; chmod it to {wanted:o}"),
    }
}
