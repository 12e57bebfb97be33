//! Free space, and write errors that say what to do: a full disk names the
//! file, the bytes it needed and the bytes free; a read-only folder says so.

use std::path::Path;

/// Bytes free to this user on the filesystem holding `path` (or its
/// nearest existing ancestor); `None` where the system cannot tell.
pub fn available_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    statvfs_available(existing)
}

#[cfg(unix)]
fn statvfs_available(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a buffer of the right type;
    // statvfs fills the buffer when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
fn statvfs_available(_path: &Path) -> Option<u64> {
    None
}

/// `bytes` for people: `734 B`, `12.4 MB`, `3.1 GB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether `e` says the filesystem is full (or over quota).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether `e` says the folder cannot be written at all.
pub fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

/// The error of writing `bytes` bytes to `path`, saying why in words a
/// user can act on (same kind as `e`).
pub fn write_error(path: &Path, bytes: usize, e: std::io::Error) -> std::io::Error {
    let why = if is_full(&e) {
        let free = available_bytes(path)
            .map(|b| format!("{} free", human(b)))
            .unwrap_or_default();
        let needed = if bytes > 0 {
            format!("needed {}, ", human(bytes as u64))
        } else {
            String::new()
        };
        format!(
            "the disk is full ({needed}{free}): free some space, or write elsewhere (--runs, --cache)"
        )
    } else if is_read_only(&e) {
        format!("{e} (the folder is read-only for this user: choose a writable one with --runs / --cache)")
    } else {
        e.to_string()
    };
    std::io::Error::new(e.kind(), format!("cannot write {}: {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(human(734), "734 B");
        assert_eq!(human(12_400_000), "12.4 MB");
        assert_eq!(human(3_100_000_000), "3.1 GB");
    }

    #[test]
    fn free_space_is_known_for_an_existing_folder_and_its_future_children() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some_and(|b| b > 0));
        assert_eq!(
            available_bytes(&dir.path().join("not/yet")),
            available_bytes(dir.path())
        );
    }

    #[test]
    fn a_full_disk_names_the_file_and_the_bytes_needed() {
        let e = write_error(
            Path::new("/runs/r/oof.csv"),
            2_000_000,
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        let text = e.to_string();
        assert!(text.contains("/runs/r/oof.csv"), "{text}");
        assert!(text.contains("disk is full (needed 2.0 MB, "), "{text}");
    }
}
