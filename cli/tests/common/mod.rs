//! What the command-line tests share: the `mosic` binary, and the fixtures of every crate.

pub use mosic::testing::*;
use std::process::{Command, Output};

pub fn mosic() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mosic"))
}

pub fn run(args: &[&str]) -> Output {
    mosic().args(args).output().expect("mosic runs")
}
