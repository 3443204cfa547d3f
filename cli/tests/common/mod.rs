//! What the command-line tests share: the `mosic` binary, and the fixtures of every crate.

pub use mosic::testing::*;
use std::process::{Command, Output};

pub fn mosic() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mosic"))
}

pub fn run(args: &[&str]) -> Output {
    mosic().args(args).output().expect("mosic runs")
}

/// `mosic synth --out OUT --videos N --frames F --width W --height H EXTRA...`, which must
/// succeed. (Not every test binary makes videos.)
#[allow(dead_code)]
pub fn synth_videos(
    out: &std::path::Path,
    videos: u32,
    frames: u32,
    size: (u32, u32),
    extra: &[&str],
) {
    let n = |v: u32| v.to_string();
    let (v, f, w, h) = (n(videos), n(frames), n(size.0), n(size.1));
    let mut a = vec!["synth", "--out", out.to_str().unwrap(), "--videos", &v, "--frames", &f];
    a.extend(["--width", &w, "--height", &h]);
    a.extend_from_slice(extra);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
}
