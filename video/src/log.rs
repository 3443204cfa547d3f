//! FFmpeg's own log lines, routed through the program's output and named after the video
//! being decoded.
//!
//! FFmpeg writes to stderr by default, which lands in the middle of a progress bar and
//! says nothing of which file it is about. [`set_sink`] installs a callback for every line
//! at or above a level; the thread that decodes a video names it with [`VideoScope`] (FFmpeg
//! logs on the calling thread, since decoding here is single-threaded).

use ffmpeg_next::ffi;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, RwLock};

/// FFmpeg's log levels, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Verbose,
    Debug,
    Trace,
}

impl Level {
    fn av(self) -> c_int {
        match self {
            Level::Error => ffi::AV_LOG_ERROR,
            Level::Warning => ffi::AV_LOG_WARNING,
            Level::Info => ffi::AV_LOG_INFO,
            Level::Verbose => ffi::AV_LOG_VERBOSE,
            Level::Debug => ffi::AV_LOG_DEBUG,
            Level::Trace => ffi::AV_LOG_TRACE,
        }
    }

    fn from_av(level: c_int) -> Level {
        match level {
            l if l <= ffi::AV_LOG_ERROR => Level::Error,
            l if l <= ffi::AV_LOG_WARNING => Level::Warning,
            l if l <= ffi::AV_LOG_INFO => Level::Info,
            l if l <= ffi::AV_LOG_VERBOSE => Level::Verbose,
            l if l <= ffi::AV_LOG_DEBUG => Level::Debug,
            _ => Level::Trace,
        }
    }
}

/// One line: the video being decoded on that thread (if any), the level and the text
/// (FFmpeg's component prefix included, trailing newline removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub video: Option<String>,
    pub level: Level,
    pub text: String,
}

pub type Sink = Arc<dyn Fn(&Message) + Send + Sync>;

static SINK: RwLock<Option<(Level, Sink)>> = RwLock::new(None);

thread_local! {
    static VIDEO: RefCell<Option<String>> = const { RefCell::new(None) };
    /// A line FFmpeg sends in pieces (no trailing newline yet).
    static PARTIAL: RefCell<String> = const { RefCell::new(String::new()) };
    /// FFmpeg's "print the component prefix" state of the line in progress.
    static PREFIX: Cell<c_int> = const { Cell::new(1) };
}

/// Sends FFmpeg's lines at `level` and above to `sink` instead of stderr.
pub fn set_sink(level: Level, sink: Sink) {
    crate::init();
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = Some((level, sink));
    // SAFETY: plain setters of FFmpeg's global log state; `callback` is a valid C callback.
    // SAFETY: FFmpeg's logging setters take plain values; `callback` has the signature
    // av_log_set_callback expects and outlives the program.
    unsafe {
        ffi::av_log_set_level(level.av());
        ffi::av_log_set_callback(Some(callback));
    }
}

/// Back to FFmpeg's own stderr output at error level.
pub fn clear_sink() {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = None;
    // SAFETY: FFmpeg's own default callback and level, set through its setters.
    unsafe {
        ffi::av_log_set_callback(Some(ffi::av_log_default_callback));
        ffi::av_log_set_level(ffi::AV_LOG_ERROR);
    }
}

/// Names the video this thread decodes until dropped.
pub struct VideoScope {
    previous: Option<String>,
}

impl VideoScope {
    pub fn enter(video: &str) -> Self {
        let previous = VIDEO.with(|v| v.replace(Some(video.to_string())));
        Self { previous }
    }
}

impl Drop for VideoScope {
    fn drop(&mut self) {
        VIDEO.with(|v| *v.borrow_mut() = self.previous.take());
    }
}

/// FFmpeg's callback signature passes the va_list as a pointer to its (x86-64) tag.
type VaList = *mut ffi::__va_list_tag;

unsafe extern "C" fn callback(avcl: *mut c_void, level: c_int, fmt: *const c_char, vl: VaList) {
    let Ok(guard) = SINK.try_read() else { return };
    let Some((min, sink)) = guard.as_ref() else { return };
    if level > min.av() {
        return;
    }
    let mut buf = [0 as c_char; 1024];
    let mut prefix: c_int = PREFIX.with(Cell::get);
    // SAFETY: FFmpeg hands us a valid format and va_list; the buffer size is passed along and
    // the result is NUL-terminated (truncated if needed).
    let n = unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            vl,
            buf.as_mut_ptr(),
            buf.len() as c_int,
            &mut prefix,
        )
    };
    PREFIX.with(|p| p.set(prefix));
    if n < 0 {
        return;
    }
    // SAFETY: av_log_format_line2 NUL-terminates what it wrote in `buf` (checked n >= 0).
    let piece = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let line = PARTIAL.with(|p| {
        let mut p = p.borrow_mut();
        p.push_str(&piece);
        if p.ends_with('\n') {
            Some(std::mem::take(&mut *p))
        } else {
            None
        }
    });
    let Some(line) = line else { return };
    let text = without_address(line.trim_end());
    if text.is_empty() {
        return;
    }
    let video = VIDEO.with(|v| v.borrow().clone());
    let msg = Message { video, level: Level::from_av(level), text };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(&msg)));
}

/// "[h264 @ 0x55d0c3a2b940] msg" -> "[h264] msg": the address means nothing to a reader.
fn without_address(line: &str) -> String {
    if let (Some(rest), Some(end)) = (line.strip_prefix('['), line.find(']')) {
        if let Some(at) = rest[..end - 1].find(" @ 0x") {
            return format!("[{}{}", &rest[..at], &line[end..]);
        }
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corrupted MP4 makes the decoder complain; every line reaches the sink, named.
    #[test]
    fn decoder_errors_are_captured_with_the_video_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let mut w = crate::Mp4Writer::create(&path, 64, 48, 30).unwrap();
        for k in 0..30 {
            w.push(&crate::test_util::gradient(64, 48, k)).unwrap();
        }
        w.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        // Scramble the middle of the file (frame data) but not the headers.
        let mut x = 0x9e37_79b9u32;
        for b in &mut bytes[n / 3..n * 2 / 3] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b ^= x as u8;
        }
        let bad = dir.path().join("bad.mp4");
        std::fs::write(&bad, &bytes).unwrap();

        let got: Arc<std::sync::Mutex<Vec<Message>>> = Arc::default();
        let g = got.clone();
        set_sink(Level::Error, Arc::new(move |m: &Message| g.lock().unwrap().push(m.clone())));
        {
            let _scope = VideoScope::enter("bad");
            if let Ok(dec) = crate::Decoder::open(&bad) {
                for f in dec {
                    if f.is_err() {
                        break;
                    }
                }
            }
        }
        clear_sink();
        let got = got.lock().unwrap();
        assert!(!got.is_empty(), "FFmpeg logged nothing for a scrambled file");
        assert!(
            got.iter().all(|m| m.video.as_deref() == Some("bad") && m.level == Level::Error),
            "{got:?}"
        );
        assert!(
            got.iter().all(|m| !m.text.contains(" @ 0x") && !m.text.ends_with('\n')),
            "{got:?}"
        );
    }

    #[test]
    fn addresses_are_dropped_from_prefixes() {
        assert_eq!(
            without_address("[h264 @ 0x55d0c3a2b940] error while decoding MB 3 4"),
            "[h264] error while decoding MB 3 4"
        );
        assert_eq!(without_address("no prefix"), "no prefix");
        assert_eq!(
            without_address("[mov,mp4 @ 0x1] moov atom not found"),
            "[mov,mp4] moov atom not found"
        );
    }
}
