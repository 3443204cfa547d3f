use std::path::{Path, PathBuf};

/// Every error names the file it concerns, so a message alone tells the user where to look.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a readable shard: {msg}", path.display())]
    Parquet { path: PathBuf, msg: String },
    #[error("{}: shard schema version {found} is not supported (this build reads major version {supported}); use a newer mosic", path.display())]
    Version { path: PathBuf, found: String, supported: u32 },
    #[error("{}: checksum mismatch (manifest: {expected}, file: {actual}); the file is corrupt or was changed", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn invalid(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn parquet(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::Parquet { path: path.as_ref().to_path_buf(), msg: msg.to_string() }
    }
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::Parquet { path, .. }
            | Error::Version { path, .. }
            | Error::Checksum { path, .. }
            | Error::Invalid { path, .. } => path,
        }
    }
}
