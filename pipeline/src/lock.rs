//! One writer per output directory: a lock file naming its holder (host, process id and the
//! process's start time, so a recycled process id is not mistaken for the holder).
//!
//! A lock whose process is gone on this host is taken over; one held on another host (a
//! shared file system under SLURM) cannot be checked from here, so the message says how to
//! clear it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOCK_NAME: &str = "tracks.lock";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat`), when known.
    pub start: Option<u64>,
}

impl Holder {
    pub fn this() -> Self {
        let pid = std::process::id();
        Self { host: hostname(), pid, start: process_start(pid) }
    }

    /// Whether the holder still runs; only answerable on the holder's own host.
    fn alive_here(&self) -> bool {
        match process_start(self.pid) {
            None => false,
            Some(now) => self.start.is_none_or(|s| s == now),
        }
    }
}

/// The lock on a directory, released (the file removed) when dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// Set when a stale lock was replaced: whose it was.
    pub took_over: Option<Holder>,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_NAME);
        let me = Holder::this();
        let mut took_over = None;
        for _ in 0..3 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(serde_json::to_string(&me)?.as_bytes())
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("cannot write the lock {}", path.display()))?;
                    return Ok(Self { path, took_over });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot create the lock {}", path.display()))
                }
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // released meanwhile
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read the lock {}", path.display()))
                }
            };
            let holder: Holder = match serde_json::from_str(&text) {
                Ok(h) => h,
                // Its writer died between creating and writing it.
                Err(_) if text.is_empty() => Holder { host: me.host.clone(), pid: 0, start: None },
                Err(e) => bail!(
                    "{}: not a lock file of mosic ({e}); remove it if no run uses this directory",
                    path.display()
                ),
            };
            if holder.host != me.host {
                bail!(
                    "{} is being written by process {} on host {} (lock {}). If that run is no longer alive \
                     (e.g. a cancelled SLURM job), remove the lock file and run again",
                    dir.display(),
                    holder.pid,
                    holder.host,
                    path.display()
                );
            }
            if holder.alive_here() {
                bail!(
                    "{} is being written by another mosic run: process {} on this host ({}); wait for it to \
                     finish or stop it (lock {})",
                    dir.display(),
                    holder.pid,
                    holder.host,
                    path.display()
                );
            }
            // Stale: its process is gone.
            std::fs::remove_file(&path)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .with_context(|| format!("cannot remove the stale lock {}", path.display()))?;
            took_over = Some(holder);
        }
        bail!("{}: could not take the lock (another run keeps taking it)", path.display())
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Only our own lock is removed.
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| serde_json::from_str::<Holder>(&t).ok())
            .is_some_and(|h| h == Holder::this());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Field 22 of `/proc/PID/stat`; None when the process does not exist.
fn process_start(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).and_then(|s| s.parse().ok()).or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_and_released_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let a = DirLock::acquire(tmp.path()).unwrap();
        assert!(a.took_over.is_none());
        // Our own process holds it, so it is alive.
        let e = DirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())) && e.contains(&hostname()),
            "{e}"
        );
        drop(a);
        assert!(!tmp.path().join(LOCK_NAME).exists());
        DirLock::acquire(tmp.path()).unwrap();
    }

    #[test]
    fn stale_and_foreign_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(LOCK_NAME);
        // A process that no longer exists on this host: a child that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Holder { host: hostname(), pid, start: Some(1) };
        std::fs::write(&path, serde_json::to_string(&gone).unwrap()).unwrap();
        let l = DirLock::acquire(tmp.path()).unwrap();
        assert_eq!(l.took_over.as_ref().map(|h| h.pid), Some(pid));
        drop(l);
        // A recycled pid: our own, with another start time.
        let recycled = Holder { start: Some(u64::MAX), ..Holder::this() };
        std::fs::write(&path, serde_json::to_string(&recycled).unwrap()).unwrap();
        assert!(DirLock::acquire(tmp.path()).unwrap().took_over.is_some());
        // Another host: never taken over.
        let foreign = Holder { host: "node-17".into(), pid: 4242, start: None };
        std::fs::write(&path, serde_json::to_string(&foreign).unwrap()).unwrap();
        let e = DirLock::acquire(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("process 4242 on host node-17") && e.contains("remove the lock file"),
            "{e}"
        );
        assert!(path.exists());
    }
}
