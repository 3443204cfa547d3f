//! RGB frames to an MP4 file (H.264 when libx264 is available, else MPEG-4 part 2).

use std::path::{Path, PathBuf};

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use image::RgbImage;

use crate::VideoError;

/// Writes RGB frames to an MP4 at a constant frame rate.
///
/// Output goes to `<path>.tmp-<pid>` and is renamed to `path` by
/// [`finish`](Self::finish), so readers never see a half-written file; a
/// writer dropped without `finish` removes its temp file. Width and height
/// must be even (yuv420p subsamples chroma by two).
pub struct Mp4Writer {
    path: PathBuf,
    tmp: PathBuf,
    inner: Option<Inner>,
}

struct Inner {
    output: ff::format::context::Output,
    encoder: ff::encoder::Video,
    scaler: scaling::Context,
    rgb: ff::frame::Video,
    stream: usize,
    encoder_tb: ff::Rational,
    stream_tb: ff::Rational,
    width: u32,
    height: u32,
    frames: i64,
}

impl Mp4Writer {
    pub fn create(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        Self::create_with(path, width, height, fps, None)
    }

    /// `codec` overrides the libx264-else-mpeg4 choice (tests cover both).
    fn create_with(
        path: &Path,
        width: u32,
        height: u32,
        fps: u32,
        codec: Option<&str>,
    ) -> Result<Self, VideoError> {
        crate::init();
        if width == 0
            || height == 0
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || fps == 0
        {
            return Err(VideoError::InvalidInput {
                path: path.into(),
                message: format!("MP4 needs even, non-zero width and height and fps > 0, got {width}x{height} at {fps} fps"),
            });
        }
        let tmp = crate::tmp_path(path);
        let mut writer = Self { path: path.into(), tmp, inner: None };
        writer.inner =
            Some(Inner::open(&writer.tmp, width, height, fps, codec).map_err(|e| writer.err(e))?);
        Ok(writer)
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.frames as u64)
    }

    pub fn push(&mut self, frame: &RgbImage) -> Result<(), VideoError> {
        let inner = self.inner.as_mut().expect("inner is only taken by finish(self)");
        if frame.dimensions() != (inner.width, inner.height) {
            return Err(VideoError::InvalidInput {
                path: self.path.clone(),
                message: format!(
                    "frame is {}x{}, writer was created for {}x{}",
                    frame.width(),
                    frame.height(),
                    inner.width,
                    inner.height
                ),
            });
        }
        let result = inner.push(frame);
        result.map_err(|e| self.err(e))
    }

    /// Flushes the encoder, writes the trailer and moves the file into place.
    pub fn finish(mut self) -> Result<(), VideoError> {
        let Some(mut inner) = self.inner.take() else {
            return Ok(());
        };
        inner.finish().map_err(|e| self.err(e))?;
        // Close the file before renaming it.
        drop(inner);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|source| VideoError::Io { path: self.path.clone(), source })
    }

    fn err(&self, e: ff::Error) -> VideoError {
        VideoError::Encode { path: self.path.clone(), message: e.to_string() }
    }
}

impl Drop for Mp4Writer {
    fn drop(&mut self) {
        if self.inner.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Inner {
    fn open(
        tmp: &Path,
        width: u32,
        height: u32,
        fps: u32,
        codec: Option<&str>,
    ) -> Result<Self, ff::Error> {
        // The temp name has no .mp4 extension, so name the muxer explicitly.
        let mut output = ff::format::output_as(tmp, "mp4")?;
        let global_header = output.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
        let codec = match codec {
            Some(name) => ff::encoder::find_by_name(name),
            None => {
                ff::encoder::find_by_name("libx264").or_else(|| ff::encoder::find_by_name("mpeg4"))
            }
        }
        .ok_or(ff::Error::EncoderNotFound)?;
        let x264 = codec.name() == "libx264";
        let encoder_tb = ff::Rational::new(1, fps as i32);

        let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video()?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(encoder_tb);
        enc.set_frame_rate(Some(ff::Rational::new(fps as i32, 1)));
        enc.set_gop(2 * fps.min(125));
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let mut opts = ff::Dictionary::new();
        if x264 {
            opts.set("preset", "fast");
            opts.set("crf", "18");
        } else {
            // mpeg4 has no CRF; this rate is visually lossless at the
            // resolutions this project writes (up to ~512px).
            enc.set_bit_rate(4_000_000);
            enc.set_max_bit_rate(8_000_000);
        }
        let encoder = enc.open_with(opts)?;

        let mut stream = output.add_stream(codec)?;
        stream.set_parameters(&encoder);
        stream.set_time_base(encoder_tb);
        stream.set_avg_frame_rate(ff::Rational::new(fps as i32, 1));
        let stream_index = stream.index();
        // Index up front so players can stream the file and a truncated copy
        // still yields its leading frames.
        let mut mux_opts = ff::Dictionary::new();
        mux_opts.set("movflags", "+faststart");
        output.write_header_with(mux_opts)?;
        // The muxer may pick its own time base while writing the header.
        let stream_tb = output.stream(stream_index).ok_or(ff::Error::StreamNotFound)?.time_base();

        let scaler = scaling::Context::get(
            Pixel::RGB24,
            width,
            height,
            Pixel::YUV420P,
            width,
            height,
            scaling::Flags::BILINEAR | scaling::Flags::ACCURATE_RND,
        )?;
        Ok(Self {
            output,
            encoder,
            scaler,
            rgb: ff::frame::Video::new(Pixel::RGB24, width, height),
            stream: stream_index,
            encoder_tb,
            stream_tb,
            width,
            height,
            frames: 0,
        })
    }

    fn push(&mut self, img: &RgbImage) -> Result<(), ff::Error> {
        let row = self.width as usize * 3;
        let stride = self.rgb.stride(0);
        let data = self.rgb.data_mut(0);
        for (dst, src) in data.chunks_mut(stride).zip(img.as_raw().chunks(row)) {
            dst[..row].copy_from_slice(src);
        }
        // A fresh frame each time: encoders may keep a reference to frames
        // they buffer (B-frames, lookahead), so a reused buffer would be
        // overwritten under them.
        let mut yuv = ff::frame::Video::empty();
        self.scaler.run(&self.rgb, &mut yuv)?;
        yuv.set_pts(Some(self.frames));
        self.frames += 1;
        self.encoder.send_frame(&yuv)?;
        self.drain()
    }

    fn finish(&mut self) -> Result<(), ff::Error> {
        self.encoder.send_eof()?;
        self.drain()?;
        self.output.write_trailer()
    }

    fn drain(&mut self) -> Result<(), ff::Error> {
        let mut packet = ff::Packet::empty();
        loop {
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {}
                Err(ff::Error::Eof) => return Ok(()),
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
            // Without a duration the muxer cannot time the last frame, which
            // skews the frame rate readers derive from the file.
            if packet.duration() == 0 {
                packet.set_duration(1);
            }
            packet.set_stream(self.stream);
            packet.rescale_ts(self.encoder_tb, self.stream_tb);
            packet.write_interleaved(&mut self.output)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{gradient, mean_abs_diff};
    use crate::{decode_all, decode_frames, probe};

    fn write_clip(path: &Path, n: u32, codec: Option<&str>) -> Vec<RgbImage> {
        let frames: Vec<_> = (0..n).map(|k| gradient(64, 48, k)).collect();
        let mut w = Mp4Writer::create_with(path, 64, 48, 30, codec).unwrap();
        for f in &frames {
            w.push(f).unwrap();
        }
        assert_eq!(w.frames(), n as u64);
        w.finish().unwrap();
        frames
    }

    #[test]
    fn roundtrip_default_codec() {
        roundtrip(None);
    }

    #[test]
    fn roundtrip_mpeg4() {
        roundtrip(Some("mpeg4"));
    }

    fn roundtrip(codec: Option<&str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let src = write_clip(&path, 20, codec);
        assert!(!crate::tmp_path(&path).exists(), "temp file left behind");

        let info = probe(&path).unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        assert!((info.fps - 30.0).abs() < 1e-6, "fps {}", info.fps);
        assert_eq!(info.frames, Some(20));
        let expected = if codec.is_none() && ff::encoder::find_by_name("libx264").is_some() {
            "h264"
        } else {
            "mpeg4"
        };
        assert_eq!(info.codec, expected);

        let (info2, frames) = decode_all(&path).unwrap();
        assert_eq!(info2, info);
        assert_eq!(frames.len(), 20);
        for (k, (a, b)) in src.iter().zip(&frames).enumerate() {
            assert_eq!(b.dimensions(), (64, 48));
            let err = mean_abs_diff(a, b);
            assert!(err < 10.0, "frame {k}: mean abs error {err}");
        }

        let picked = decode_frames(&path, &[7, 0, 19, 7]).unwrap();
        for (img, k) in picked.iter().zip([7, 0, 19, 7]) {
            assert_eq!(img, &frames[k]);
        }
        assert!(decode_frames(&path, &[]).unwrap().is_empty());
        let msg = decode_frames(&path, &[3, 95]).unwrap_err().to_string();
        assert!(
            msg.contains(&*path.to_string_lossy()) && msg.contains("ended at frame 20, frame 95"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_file_errors_or_yields_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        write_clip(&path, 20, None);
        let bytes = std::fs::read(&path).unwrap();
        for pct in [10, 30, 60, 90, 99] {
            let cut = dir.path().join(format!("cut{pct}.mp4"));
            std::fs::write(&cut, &bytes[..bytes.len() * pct / 100]).unwrap();
            match decode_all(&cut) {
                // Cutting only trailing metadata may leave every frame intact.
                Ok((_, frames)) => {
                    assert!(frames.len() < 20 || pct > 90, "{pct}%: {} frames", frames.len())
                }
                Err(e) => assert!(e.to_string().contains(&*cut.to_string_lossy()), "{e}"),
            }
        }
    }

    #[test]
    fn rejects_bad_sizes_and_mismatched_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.mp4");
        let msg = Mp4Writer::create(&path, 63, 48, 30).err().unwrap().to_string();
        assert!(msg.contains("odd.mp4") && msg.contains("63x48"), "{msg}");

        let mut w = Mp4Writer::create(&path, 64, 48, 30).unwrap();
        assert!(w.push(&gradient(32, 48, 0)).is_err());
        drop(w);
        assert!(!path.exists() && !crate::tmp_path(&path).exists());
    }
}
