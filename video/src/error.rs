use std::path::PathBuf;

/// Every variant names the file it concerns, so a failure deep inside a batch
/// job still says which video to look at.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("cannot open video {}: {source}", path.display())]
    Open { path: PathBuf, source: ffmpeg_next::Error },
    #[error("no video stream in {}", path.display())]
    NoVideoStream { path: PathBuf },
    #[error("cannot decode video {}: {message}", path.display())]
    Codec { path: PathBuf, message: String },
    #[error("video {} has 0 decodable frames", path.display())]
    NoFrames { path: PathBuf },
    #[error("video {} ended at frame {decoded}, frame {requested} was requested", path.display())]
    TooShort {
        path: PathBuf,
        /// Number of frames the video actually yielded.
        decoded: u64,
        requested: u64,
    },
    #[error("decode error in {} at frame {frame}: {source}", path.display())]
    Decode { path: PathBuf, frame: u64, source: ffmpeg_next::Error },
    #[error("cannot encode {}: {message}", path.display())]
    Encode { path: PathBuf, message: String },
    #[error("invalid input for {}: {message}", path.display())]
    InvalidInput { path: PathBuf, message: String },
    #[error("unsupported output format for {}: expected .gif or .mp4", path.display())]
    UnsupportedFormat { path: PathBuf },
    #[error("I/O error on {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl VideoError {
    /// The file the error concerns.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Open { path, .. }
            | Self::NoVideoStream { path }
            | Self::Codec { path, .. }
            | Self::NoFrames { path }
            | Self::TooShort { path, .. }
            | Self::Decode { path, .. }
            | Self::Encode { path, .. }
            | Self::InvalidInput { path, .. }
            | Self::UnsupportedFormat { path }
            | Self::Io { path, .. } => path,
        }
    }
}
