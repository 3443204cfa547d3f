//! Atomic writes and checksums: a finished file is either complete or absent, never torn.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed into place.
/// Unique per process so concurrent workers never share one.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(path);
    Ok(())
}

/// The text of `path`, a regular file of at most `max` bytes. Anything else (a FIFO, a
/// device such as `/dev/zero`, a directory, a file too large) is refused with an error that
/// says so, without blocking on it or reading it whole: run directories are read from other
/// people's machines. A missing file keeps the `NotFound` kind.
pub fn read_text_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error as IoError, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, so that opening a FIFO does not wait for a writer.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(IoError::new(ErrorKind::InvalidData, "not a regular file"));
    }
    if meta.len() > max {
        return Err(IoError::new(
            ErrorKind::InvalidData,
            format!("{} bytes, more than the {max} read", meta.len()),
        ));
    }
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(IoError::new(ErrorKind::InvalidData, "grew past the size read"));
    }
    String::from_utf8(bytes).map_err(|e| IoError::new(ErrorKind::InvalidData, e))
}

/// Whether the process `pid` that wrote something at `written` still runs: a process of that
/// number exists and started before the write (a number reused by a later process does not
/// count). Linux; elsewhere a live number counts.
pub fn writer_alive(pid: u32, written: std::time::SystemTime) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let started = (|| {
        // Field 22 (starttime, clock ticks since boot), after the command in parentheses.
        let ticks: u64 = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()?;
        let btime: u64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime + ticks / hz))
    })();
    // One second of slack for the clock-tick rounding.
    started.is_none_or(|s| s <= written + std::time::Duration::from_secs(1))
}

/// Makes a rename durable; best effort because not every filesystem allows it.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir }) {
            let _ = d.sync_all();
        }
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through it, so a shard's checksum costs no second read.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), bytes: 0 }
    }
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
