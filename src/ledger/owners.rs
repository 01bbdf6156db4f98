//! Who holds a reservation, and releasing the holds of processes that died.
//!
//! A reservation normally ends when its call settles, or when the guard
//! that owns it is dropped. A process killed mid-call (SIGKILL, power
//! loss, OOM killer) runs neither, and its holds would keep money out of
//! the budget until they expire (minutes). Several processes share one
//! ledger — Claude Desktop's server, CLI commands, a second client — so a
//! starting process must not simply drop every hold: the others' calls are
//! still in flight.
//!
//! Each process that opens the ledger therefore takes an *instance lock*:
//! a file `<ledger>-owners/<random id>.lock` on which it holds an exclusive
//! OS file lock for as long as its `Ledger` lives, and every reservation it
//! takes names that id in `reservations.owner`. The OS drops the lock when
//! the process dies, however it dies. On start-up a process sweeps: for
//! each owner id in `reservations` other than its own, if the lock file is
//! gone or can be locked, nobody holds it, so that owner is dead and its
//! holds are deleted.
//!
//! Why a file lock rather than a stored PID: PIDs are reused (a PID check
//! can keep a dead owner's holds alive forever, or a PID namespace can make
//! a live one look dead), and checking one is platform-specific; an OS file
//! lock is released exactly when its holder dies, on every platform.
//!
//! Ordering makes the sweep safe: the lock is taken before the first
//! reservation is written, and the file is removed only by its holder at
//! shutdown (after its guards released their holds) or by a sweeper that
//! holds the lock itself. So a reservation whose owner's lock is free
//! belongs to a process that can no longer settle it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// This process's claim on the ledger: held (locked) until dropped.
#[derive(Debug)]
pub(crate) struct InstanceLock {
    /// Random id stored in `reservations.owner`.
    pub(crate) id: String,
    path: PathBuf,
    // Keeps the OS lock; closing the file releases it.
    _file: File,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // A clean exit: every guard of this process has already released
        // its hold, so nothing needs the file any more.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The directory of instance locks beside the ledger file, the real file
/// when it is reached through a symlink: every process sharing the
/// database must look in one directory, or each would take the others'
/// holds for those of dead processes and release them.
pub(crate) fn owners_dir(ledger: &Path) -> PathBuf {
    let ledger = std::fs::canonicalize(ledger).unwrap_or_else(|_| ledger.to_path_buf());
    let mut name = ledger.file_name().unwrap_or_default().to_os_string();
    name.push("-owners");
    ledger.with_file_name(name)
}

fn open_private(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if create_new {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// Creates and locks a new instance lock in `dir`.
pub(crate) fn acquire(dir: &Path) -> std::io::Result<InstanceLock> {
    crate::ledger::create_private_dir(dir).map_err(std::io::Error::other)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    // Locked under a name sweepers ignore, then renamed: a sweeper can
    // never find the file unlocked while its owner is alive.
    let staging = dir.join(format!("{id}.new"));
    let path = dir.join(format!("{id}.lock"));
    let file = open_private(&staging, true)?;
    let locked = file
        .try_lock()
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| std::fs::rename(&staging, &path));
    if let Err(e) = locked {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(InstanceLock {
        id,
        path,
        _file: file,
    })
}

/// Is the owner `id` gone? True when its lock file is missing or can be
/// locked by us. On true, the returned file (if any) holds the lock, so the
/// caller can delete the holds and the file before anyone else looks.
fn dead(dir: &Path, id: &str) -> (bool, Option<File>) {
    // Ids are ours (hex); anything else is not a file name we would make.
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return (false, None);
    }
    match open_private(&dir.join(format!("{id}.lock")), false) {
        Ok(f) => match f.try_lock() {
            Ok(()) => (true, Some(f)),
            Err(_) => (false, None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (true, None),
        // Unreadable: we cannot tell, so leave the holds to expire.
        Err(_) => (false, None),
    }
}

/// Deletes the reservations of owners that are no longer running, and
/// their leftover lock files. Returns how many holds were released.
pub(crate) fn release_dead(
    conn: &Connection,
    dir: &Path,
    me: Option<&str>,
) -> rusqlite::Result<usize> {
    let owners: Vec<String> = {
        let mut stmt =
            conn.prepare("SELECT DISTINCT owner FROM reservations WHERE owner IS NOT NULL")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut released = 0;
    for owner in owners.iter().filter(|o| Some(o.as_str()) != me) {
        let (gone, lock) = dead(dir, owner);
        if !gone {
            continue;
        }
        released += conn.execute("DELETE FROM reservations WHERE owner = ?1", [owner])?;
        if lock.is_some() {
            let _ = std::fs::remove_file(dir.join(format!("{owner}.lock")));
        }
    }
    // Lock files of processes that died without holds: tidy them too.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lock") else {
                continue;
            };
            if Some(id) == me {
                continue;
            }
            if let (true, Some(_held)) = dead(dir, id) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(released)
}
