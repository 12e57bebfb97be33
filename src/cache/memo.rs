//! Values computed from files (weights fingerprints, image-set hashes),
//! remembered while the files stay the same.

use std::path::Path;

use super::{write_atomic, FeatureCache};

/// What says a file is unchanged: its absolute path, size, modification
/// time (nanoseconds) and, on Unix, inode (a file replaced by a rename is
/// another file even with the same size and time).
struct FileStamp {
    path: String,
    size: u64,
    modified_ns: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp {
            path: path.to_str()?.to_string(),
            size: meta.len(),
            modified_ns: u64::try_from(modified.as_nanos()).ok()?,
            inode,
        })
    }
}

/// A memo file: what was computed from which files in which state.
#[derive(serde::Serialize, serde::Deserialize)]
struct Memo {
    kind: String,
    /// The first file (for a reader of the cache folder).
    first: String,
    files: usize,
    /// BLAKE3 of every file's size, modification time and inode, in order.
    state: String,
    value: String,
}

impl FeatureCache {
    /// `compute()`'s value for the files at `paths`, remembered under
    /// `kind` while every file's size and modification time stay the same
    /// (what DVC's state database does for its hashes). A backbone's weights
    /// fingerprint reads and hashes every tensor (~0.25 s per file and run);
    /// hashing a Kaggle-sized image set reads ~1.5 GB. One memo file per
    /// kind and list of paths, overwritten when a file changes. A memo that
    /// cannot be read or written is ignored (recomputed).
    pub fn memoised<P: AsRef<Path> + Sync, E>(
        &self,
        kind: &str,
        paths: &[P],
        compute: impl FnOnce() -> Result<String, E>,
    ) -> Result<String, E> {
        use rayon::prelude::*;
        let Some(stamps) = paths
            .par_iter()
            .map(|p| FileStamp::of(p.as_ref()))
            .collect::<Option<Vec<FileStamp>>>()
        else {
            return compute();
        };
        let (mut names, mut states) = (blake3::Hasher::new(), blake3::Hasher::new());
        names.update(kind.as_bytes());
        for stamp in &stamps {
            names.update(b"\n").update(stamp.path.as_bytes());
            states.update(&stamp.size.to_le_bytes());
            states.update(&stamp.modified_ns.to_le_bytes());
            states.update(&stamp.inode.to_le_bytes());
        }
        let name = format!("memo/{}.json", &names.finalize().to_hex()[..32]);
        let memo_path = self.root.join(&name);
        let state = states.finalize().to_hex().to_string();
        let valid = |bytes: Vec<u8>| {
            serde_json::from_slice::<Memo>(&bytes)
                .ok()
                .filter(|m| m.kind == kind && m.files == stamps.len() && m.state == state)
                .map(|m| m.value)
        };
        if let Some(value) = std::fs::read(&memo_path).ok().and_then(valid) {
            return Ok(value);
        }
        // Another machine's memo in the object store: valid where it saw
        // the same files in the same state (one dataset on a shared
        // filesystem), so a shard does not read every image to hash it.
        if let Some(bytes) = self.remote.as_ref().and_then(|r| r.get(&name)) {
            if let Some(value) = valid(bytes.clone()) {
                let _ = write_atomic(&memo_path, &bytes);
                return Ok(value);
            }
        }
        let value = compute()?;
        let memo = Memo {
            kind: kind.to_string(),
            first: stamps.first().map(|s| s.path.clone()).unwrap_or_default(),
            files: stamps.len(),
            state,
            value: value.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&memo).expect("memo serialises");
        let _ = write_atomic(&memo_path, &bytes);
        if let Some(remote) = &self.remote {
            let _ = remote.put(&name, &bytes);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FeatureCache::new(dir.path().join("cache"));
        let file = dir.path().join("weights.bin");
        std::fs::write(&file, b"first").unwrap();
        let calls = std::cell::Cell::new(0);
        let fingerprint = |kind: &str| {
            cache
                .memoised::<_, ()>(kind, &[&file], || {
                    calls.set(calls.get() + 1);
                    Ok(format!("{}", std::fs::read(&file).unwrap().len()))
                })
                .unwrap()
        };
        assert_eq!(fingerprint("a"), "5");
        assert_eq!(fingerprint("a"), "5");
        assert_eq!(calls.get(), 1, "second call served from the memo");
        assert_eq!(fingerprint("b"), "5");
        assert_eq!(calls.get(), 2, "another kind is another memo");
        std::fs::write(&file, b"second!").unwrap();
        assert_eq!(fingerprint("a"), "7");
        assert_eq!(calls.get(), 3, "a changed file is fingerprinted again");
        // A corrupt memo is ignored.
        for entry in std::fs::read_dir(dir.path().join("cache/memo")).unwrap() {
            std::fs::write(entry.unwrap().path(), b"{not json").unwrap();
        }
        assert_eq!(fingerprint("a"), "7");
        assert_eq!(calls.get(), 4);
    }
}
