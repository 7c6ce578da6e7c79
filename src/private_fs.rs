//! Files the service creates hold call data (the SQLite database with its `-wal`/`-shm`, the
//! SMS opt-out list): they are created mode `0600` in directories created mode `0700`, whatever
//! the process umask (modes are set with `chmod` after creation, which the umask does not
//! touch). Existing directories are never re-moded (the path could be a shared one such as
//! `/tmp`); one that others can enter is logged as a warning.
//!
//! Modes as in POSIX `open(2)`/`mkdir(2)`/`chmod(2)`; the service itself runs with `UMask=0077`
//! under systemd (`systemd/voxmachina.service`), this holds outside it too.

use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of files the service creates: read and write for the owner only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories the service creates: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing ancestors, each mode [`DIR_MODE`]. An existing `dir` is left
/// as it is (a warning names it when group or others can enter it).
///
/// # Errors
/// The I/O error of `mkdir` or `chmod`.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "a directory holding the service's data files is open to group or others; \
                     make it 0700"
                );
            }
            return Ok(());
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            create_private_dir_all(parent)?;
        }
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        // Created concurrently by another task or process: leave it to its creator.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending, creating it (and its directory, [`create_private_dir_all`])
/// with mode [`FILE_MODE`] when missing. An existing file is set to [`FILE_MODE`] too.
///
/// # Errors
/// The I/O error of `mkdir`, `open` or `chmod`.
pub fn open_private_append(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        create_private_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Sets `path` to [`FILE_MODE`] when it exists (a missing file is not an error).
///
/// # Errors
/// The I/O error of `chmod`.
pub fn restrict_file(path: &Path) -> io::Result<()> {
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_owner_only_dirs_and_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_private_dir_all(&dir).unwrap();
        assert_eq!(mode(&root.path().join("a")), DIR_MODE);
        assert_eq!(mode(&dir), DIR_MODE);
        let file = dir.join("list.txt");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        drop(open_private_append(&file).unwrap());
        assert_eq!(mode(&file), FILE_MODE, "an existing file is tightened");
        restrict_file(&dir.join("missing")).unwrap();
    }
}
