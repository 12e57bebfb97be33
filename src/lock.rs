//! Lock files that hold on a local disk and on a folder shared by several
//! machines (NFS and the like).
//!
//! A lock is a file created with `O_EXCL` (atomic on NFSv3+ as on local
//! disks) holding who took it: process id, process start time, host, and a
//! random nonce. While held, the process also keeps an `flock` on it and a
//! background thread touches its modification time every few seconds.
//!
//! Whether a lock whose holder is gone may be taken over:
//! - on the holder's own host, the kernel says so: the holder's `flock` is
//!   released when its process dies (kill -9 included), and where `flock`
//!   is not supported, the process id and start time are looked up;
//! - from another host, `flock` is not trusted (NFS mounted with `nolock`
//!   keeps locks per client): only a heartbeat older than [`STALE_AFTER`]
//!   makes the lock stale.
//!
//! A stale lock is renamed aside (one of several waiters wins the rename),
//! checked to still be the stale one, and removed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How often a held lock's modification time is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A lock from another host whose heartbeat is older than this is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// The holder process's start time (clock ticks since boot, Linux),
    /// so a recycled process id is not taken for the holder.
    #[serde(default)]
    pub process_start: Option<u64>,
    pub nonce: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {} on {}", self.pid, self.host)
    }
}

impl Holder {
    fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            process_start: process_start(std::process::id()),
            nonce: nonce(),
        }
    }
}

/// A held lock; released (its file removed) when dropped.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    nonce: String,
    file: Arc<File>,
}

/// What [`LockFile::try_acquire`] found.
pub enum Attempt {
    Acquired(LockFile),
    /// A live process holds it (`None`: it is being created right now).
    HeldBy(Option<Holder>),
}

impl LockFile {
    /// Takes the lock at `path` unless a live process holds it; a stale
    /// lock (its holder dead) is broken and taken. Creates the folder.
    pub fn try_acquire(path: &Path) -> std::io::Result<Attempt> {
        let named = |e: std::io::Error| crate::disk::write_error(path, 0, e);
        // Bounded: each round either takes the lock, finds it live, or
        // removes a stale one (which another waiter may then take first).
        for _ in 0..8 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(file) => return Self::take(path, file).map(Attempt::Acquired).map_err(named),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match inspect(path) {
                    State::Gone => continue,
                    State::Live(holder) => return Ok(Attempt::HeldBy(holder)),
                    State::Stale(holder) => break_stale(path, holder.as_ref()),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let dir = path.parent().unwrap_or(Path::new("."));
                    std::fs::create_dir_all(dir).map_err(named)?;
                }
                Err(e) => return Err(named(e)),
            }
        }
        Ok(Attempt::HeldBy(read_holder(path)))
    }

    /// Fills in a freshly created lock file: `flock` first, so that no
    /// other process on this host ever sees it unlocked with a holder in it.
    fn take(path: &Path, mut file: File) -> std::io::Result<LockFile> {
        // A waiter checking the new file holds a shared lock on it for a
        // moment: try again rather than go without (unsupported: go on).
        for _ in 0..200 {
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => break,
            }
        }
        let me = Holder::me();
        let written = serde_json::to_vec(&me)
            .map_err(std::io::Error::other)
            .and_then(|json| file.write_all(&json))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        let file = Arc::new(file);
        heartbeat()
            .lock()
            .expect("heartbeat list")
            .push(file.clone());
        Ok(LockFile {
            path: path.to_path_buf(),
            nonce: me.nonce,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        heartbeat()
            .lock()
            .expect("heartbeat list")
            .retain(|f| !Arc::ptr_eq(f, &self.file));
        // Only our own lock: had it been broken as stale (this process
        // stopped for minutes), the file may now be another's.
        if read_holder(&self.path).is_some_and(|h| h.nonce == self.nonce) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a live process holds the lock at `path`.
pub fn is_held(path: &Path) -> bool {
    matches!(inspect(path), State::Live(_))
}

enum State {
    Gone,
    Live(Option<Holder>),
    Stale(Option<Holder>),
}

fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn inspect(path: &Path) -> State {
    let Ok(file) = File::open(path) else {
        return State::Gone;
    };
    let age = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let holder = read_holder(path);
    let Some(h) = holder.as_ref().filter(|h| h.host == hostname()) else {
        // Another host's lock, or one whose holder is still writing it:
        // only its heartbeat says whether it lives.
        return if age > STALE_AFTER {
            State::Stale(holder)
        } else {
            State::Live(holder)
        };
    };
    let alive = match file.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => process_alive(h.pid, h.process_start),
    };
    if alive {
        State::Live(holder)
    } else {
        State::Stale(holder)
    }
}

/// Removes a stale lock, unless someone replaced it in the meantime.
fn break_stale(path: &Path, judged: Option<&Holder>) {
    let aside = path.with_extension(format!("stale-{}", nonce()));
    if std::fs::rename(path, &aside).is_err() {
        return; // another waiter moved it first
    }
    let moved = read_holder(&aside);
    if moved.as_ref().map(|h| &h.nonce) == judged.map(|h| &h.nonce) {
        let _ = std::fs::remove_file(&aside);
    } else {
        // A fresh lock taken between the look and the rename: put it back
        // (`hard_link` fails rather than overwrite a newer one).
        let _ = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
    }
}

/// The held locks whose modification time the heartbeat thread refreshes.
fn heartbeat() -> &'static Mutex<Vec<Arc<File>>> {
    static HELD: OnceLock<&'static Mutex<Vec<Arc<File>>>> = OnceLock::new();
    HELD.get_or_init(|| {
        let held: &'static Mutex<Vec<Arc<File>>> = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("lock-heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(HEARTBEAT);
                let files = held.lock().expect("heartbeat list").clone();
                for f in files {
                    let _ = f.set_modified(SystemTime::now());
                }
            })
            .expect("the heartbeat thread starts");
        held
    })
}

fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    h.update(
        &COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    h.finalize().to_hex()[..16].to_string()
}

/// This machine's name (the lock's scope for process ids).
pub fn hostname() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        #[cfg(unix)]
        {
            let mut buf = [0u8; 256];
            // SAFETY: the buffer is valid for its length; gethostname
            // writes at most that many bytes.
            let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
            if rc == 0 {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                if end > 0 {
                    return String::from_utf8_lossy(&buf[..end]).into_owned();
                }
            }
        }
        std::env::var("HOSTNAME")
            .or_else(|_| std::env::var("COMPUTERNAME"))
            .unwrap_or_else(|_| "localhost".into())
    })
    .clone()
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22), where the system has `/proc`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` (started at `start`, when known) lives on this
/// host.
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    if Path::new("/proc/self/stat").exists() {
        return match (process_start(pid), start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        };
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(path: &Path) -> LockFile {
        match LockFile::try_acquire(path).unwrap() {
            Attempt::Acquired(lock) => lock,
            Attempt::HeldBy(h) => panic!("held by {h:?}"),
        }
    }

    #[test]
    fn a_held_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/stage.lock");
        let lock = acquired(&path);
        assert!(is_held(&path));
        match LockFile::try_acquire(&path).unwrap() {
            Attempt::HeldBy(Some(h)) => assert_eq!(h.pid, std::process::id()),
            _ => panic!("a second taker must be refused"),
        }
        drop(lock);
        assert!(!path.exists());
        assert!(!is_held(&path));
        drop(acquired(&path));
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.lock");
        // What kill -9 leaves: the file, with nobody holding its flock.
        let dead = Holder {
            pid: u32::MAX - 1,
            host: hostname(),
            process_start: Some(1),
            nonce: "dead".into(),
        };
        std::fs::write(&path, serde_json::to_vec(&dead).unwrap()).unwrap();
        assert!(!is_held(&path));
        let lock = acquired(&path);
        assert_eq!(read_holder(&path).unwrap().pid, std::process::id());
        drop(lock);
    }

    #[test]
    fn another_hosts_lock_lives_while_its_heartbeat_is_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.lock");
        let remote = Holder {
            pid: 1,
            host: "another-host.example".into(),
            process_start: None,
            nonce: "remote".into(),
        };
        std::fs::write(&path, serde_json::to_vec(&remote).unwrap()).unwrap();
        assert!(is_held(&path), "fresh: live even without its flock");
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(!is_held(&path), "no heartbeat for a minute: stale");
        drop(acquired(&path));
    }

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = std::process::id();
        assert!(process_alive(me, process_start(me)));
        if let Some(start) = process_start(me) {
            assert!(!process_alive(me, Some(start + 1)));
        }
    }
}
