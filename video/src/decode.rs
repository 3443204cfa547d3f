//! Sequential decoding to RGB24.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use image::RgbImage;

use crate::VideoError;

/// Stream properties read from the container without decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Average frame rate, or the stream's base rate when the container has
    /// no average; 0.0 when neither is known.
    pub fps: f64,
    /// Frame count from the container, else estimated from duration × fps.
    /// Only an estimate: the decoded count can differ.
    pub frames: Option<u64>,
    pub duration_s: Option<f64>,
    /// FFmpeg's short codec name, e.g. "h264".
    pub codec: String,
}

/// Reads stream properties (no frames are decoded).
pub fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    Ok(Decoder::open(path)?.info)
}

/// Decodes every frame; errors if the video yields none.
pub fn decode_all(path: &Path) -> Result<(VideoInfo, Vec<RgbImage>), VideoError> {
    let mut dec = Decoder::open(path)?;
    let mut frames = Vec::new();
    while let Some((_, img)) = dec.next_frame()? {
        frames.push(img);
    }
    if frames.is_empty() {
        return Err(VideoError::NoFrames { path: path.into() });
    }
    Ok((dec.info, frames))
}

/// Decodes sequentially and returns the frames at `wanted` (0-based), in the
/// order given; duplicates are allowed. Frames in between are decoded but not
/// converted to RGB. Errors if the video ends before the largest index.
pub fn decode_frames(path: &Path, wanted: &[u64]) -> Result<Vec<RgbImage>, VideoError> {
    let Some(&last) = wanted.iter().max() else {
        return Ok(Vec::new());
    };
    let mut dec = Decoder::open(path)?;
    // Placeholders mark the wanted indices; each is filled as it is decoded.
    let mut kept: BTreeMap<u64, RgbImage> =
        wanted.iter().map(|&i| (i, RgbImage::new(0, 0))).collect();
    loop {
        let index = dec.next_index;
        if index > last {
            break;
        }
        let got = match kept.get_mut(&index) {
            Some(slot) => dec.next_frame()?.map(|(_, img)| *slot = img),
            None => dec.skip_frame()?.map(drop),
        };
        if got.is_none() {
            if index == 0 {
                return Err(VideoError::NoFrames { path: path.into() });
            }
            return Err(VideoError::TooShort {
                path: path.into(),
                decoded: index,
                requested: last,
            });
        }
    }
    Ok(wanted.iter().map(|i| kept[i].clone()).collect())
}

/// Decodes a video frame by frame, in presentation order, converting each
/// frame to RGB24 at the stream's size whatever its pixel format.
pub struct Decoder {
    path: PathBuf,
    input: ff::format::context::Input,
    decoder: ff::decoder::Video,
    stream: usize,
    info: VideoInfo,
    /// Rebuilt whenever the source format or size changes mid-stream.
    scaler: Option<(Pixel, u32, u32, scaling::Context)>,
    frame: ff::frame::Video,
    next_index: u64,
    eof_sent: bool,
}

/// Corrupt packets the demuxer may skip in a row before we give up, so a
/// garbage file cannot keep us spinning.
const MAX_BAD_PACKETS: u32 = 1000;

impl Decoder {
    pub fn open(path: &Path) -> Result<Self, VideoError> {
        crate::init();
        let open_err = |source| VideoError::Open { path: path.into(), source };
        let input = ff::format::input(path).map_err(open_err)?;
        let stream = input
            .streams()
            .best(ff::media::Type::Video)
            .ok_or_else(|| VideoError::NoVideoStream { path: path.into() })?;
        let codec_err = |e: ff::Error| VideoError::Codec {
            path: path.into(),
            message: format!("codec {}: {e}", stream.parameters().id().name()),
        };
        // Single-threaded decoding (FFmpeg's default): callers parallelise
        // across videos, and frame threading would only add latency.
        let decoder = ff::codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(codec_err)?;
        if decoder.width() == 0 || decoder.height() == 0 {
            return Err(VideoError::Codec {
                path: path.into(),
                message: "stream has no frame size".into(),
            });
        }

        let positive =
            |r: ff::Rational| (r.numerator() > 0 && r.denominator() > 0).then(|| f64::from(r));
        let fps =
            positive(stream.avg_frame_rate()).or_else(|| positive(stream.rate())).unwrap_or(0.0);
        let duration_s = if stream.duration() > 0 {
            positive(stream.time_base()).map(|tb| stream.duration() as f64 * tb)
        } else if input.duration() > 0 {
            Some(input.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE))
        } else {
            None
        };
        let frames = if stream.frames() > 0 {
            Some(stream.frames() as u64)
        } else {
            duration_s.filter(|_| fps > 0.0).map(|d| (d * fps).round() as u64)
        };
        let info = VideoInfo {
            width: decoder.width(),
            height: decoder.height(),
            fps,
            frames,
            duration_s,
            codec: stream.parameters().id().name().to_string(),
        };
        let stream = stream.index();
        Ok(Self {
            path: path.into(),
            input,
            decoder,
            stream,
            info,
            scaler: None,
            frame: ff::frame::Video::empty(),
            next_index: 0,
            eof_sent: false,
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Index the next returned frame will have (= frames returned so far).
    pub fn position(&self) -> u64 {
        self.next_index
    }

    /// Next frame and its 0-based index; `None` once the stream is exhausted.
    pub fn next_frame(&mut self) -> Result<Option<(u64, RgbImage)>, VideoError> {
        let Some(index) = self.advance()? else {
            return Ok(None);
        };
        let img = self.convert_rgb(index)?;
        Ok(Some((index, img)))
    }

    /// Decodes the next frame without converting it; returns its index.
    pub fn skip_frame(&mut self) -> Result<Option<u64>, VideoError> {
        self.advance()
    }

    /// Leaves the next decoded frame in `self.frame`.
    fn advance(&mut self) -> Result<Option<u64>, VideoError> {
        let mut bad_packets = 0;
        loop {
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    return Ok(Some(index));
                }
                Err(ff::Error::Eof) => return Ok(None),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => return Err(self.decode_err(e)),
            }
            if self.eof_sent {
                // The decoder asked for input after EOF: nothing more to come.
                return Ok(None);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) if packet.stream() == self.stream => {
                    bad_packets = 0;
                    self.decoder.send_packet(&packet).map_err(|e| self.decode_err(e))?;
                }
                Ok(()) => {}
                Err(ff::Error::Eof) => {
                    self.eof_sent = true;
                    self.decoder.send_eof().map_err(|e| self.decode_err(e))?;
                }
                // Demuxers can resync past a corrupt packet.
                Err(ff::Error::InvalidData) if bad_packets < MAX_BAD_PACKETS => bad_packets += 1,
                Err(e) => return Err(self.decode_err(e)),
            }
        }
    }

    fn decode_err(&self, source: ff::Error) -> VideoError {
        VideoError::Decode { path: self.path.clone(), frame: self.next_index, source }
    }

    fn convert_rgb(&mut self, index: u64) -> Result<RgbImage, VideoError> {
        let (fmt, w, h) = (self.frame.format(), self.frame.width(), self.frame.height());
        let err = |e| VideoError::Decode { path: self.path.clone(), frame: index, source: e };
        let scaler = match self.scaler.take() {
            Some(s) if (s.0, s.1, s.2) == (fmt, w, h) => &mut self.scaler.insert(s).3,
            // Mid-stream size changes are scaled back to the stream size so
            // every returned frame has the size `info` reports.
            _ => {
                let flags = scaling::Flags::BILINEAR
                    | scaling::Flags::ACCURATE_RND
                    | scaling::Flags::FULL_CHR_H_INT;
                let ctx = scaling::Context::get(
                    fmt,
                    w,
                    h,
                    Pixel::RGB24,
                    self.info.width,
                    self.info.height,
                    flags,
                )
                .map_err(err)?;
                &mut self.scaler.insert((fmt, w, h, ctx)).3
            }
        };
        let mut rgb = ff::frame::Video::empty();
        scaler.run(&self.frame, &mut rgb).map_err(err)?;
        Ok(rgb_image(&rgb))
    }
}

impl Iterator for Decoder {
    type Item = Result<(u64, RgbImage), VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// Copies an RGB24 frame row by row: FFmpeg pads rows to its stride.
fn rgb_image(frame: &ff::frame::Video) -> RgbImage {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = frame.stride(0);
    let data = frame.data(0);
    let mut buf = Vec::with_capacity(w * h * 3);
    for row in data.chunks(stride).take(h) {
        buf.extend_from_slice(&row[..w * 3]);
    }
    RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer sized to w*h*3")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A hand-written YUV4MPEG2 file: lets tests cover odd sizes and other
    /// pixel formats without an encoder or the ffmpeg CLI.
    fn write_y4m(path: &Path, w: usize, h: usize, chroma: &str, frames: usize) {
        let (cw, ch) = match chroma {
            "420jpeg" => (w.div_ceil(2), h.div_ceil(2)),
            "444" => (w, h),
            _ => unreachable!(),
        };
        let mut f = std::fs::File::create(path).unwrap();
        writeln!(f, "YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C{chroma}").unwrap();
        // Luma ramp along x (limited range 16..=235), neutral chroma.
        let luma: Vec<u8> = (0..w * h).map(|i| (16 + (i % w) * 219 / (w - 1)) as u8).collect();
        for _ in 0..frames {
            f.write_all(b"FRAME\n").unwrap();
            f.write_all(&luma).unwrap();
            f.write_all(&vec![128u8; 2 * cw * ch]).unwrap();
        }
    }

    #[test]
    fn odd_sizes_and_pixel_formats_convert_to_rgb() {
        let dir = tempfile::tempdir().unwrap();
        for chroma in ["420jpeg", "444"] {
            let path = dir.path().join(format!("{chroma}.y4m"));
            write_y4m(&path, 321, 241, chroma, 3);
            let (info, frames) = decode_all(&path).unwrap();
            assert_eq!((info.width, info.height, info.fps), (321, 241, 25.0));
            assert_eq!(frames.len(), 3);
            let img = &frames[2];
            assert_eq!(img.dimensions(), (321, 241));
            // Grey ramp: black at the left, white at the right, on every row.
            for y in [0, 120, 240] {
                let [r, g, b] = img.get_pixel(0, y).0;
                assert!(r < 8 && g < 8 && b < 8, "{chroma} left {:?}", (r, g, b));
                let [r, g, b] = img.get_pixel(320, y).0;
                assert!(r > 247 && g > 247 && b > 247, "{chroma} right {:?}", (r, g, b));
                let [r, g, b] = img.get_pixel(160, y).0;
                assert!(
                    r.abs_diff(g) < 4 && g.abs_diff(b) < 4 && r.abs_diff(128) < 10,
                    "{chroma} mid {:?}",
                    (r, g, b)
                );
            }
        }
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.mp4");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(&junk, bytes).unwrap();
        let err = decode_all(&junk).unwrap_err().to_string();
        assert!(err.contains(&*junk.to_string_lossy()), "{err}");

        let missing = dir.path().join("missing.mp4");
        let err = probe(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot open video") && err.contains(&*missing.to_string_lossy()),
            "{err}"
        );

        // A valid container with no video stream.
        let text = dir.path().join("notes.srt");
        std::fs::write(&text, "1\n00:00:00,000 --> 00:00:01,000\nhello\n").unwrap();
        let err = probe(&text).unwrap_err().to_string();
        assert!(err.contains("notes.srt"), "{err}");
    }
}
