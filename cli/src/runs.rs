//! `mosic runs`: run directories side by side.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunsArgs {
    /// Run directories (anything else, e.g. a report matched by a glob, is skipped with a note).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Overlay their loss and validation curves in this figure (.png or .svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print CSV (for pandas) instead of the table.
    #[arg(long)]
    csv: bool,
}

pub fn runs(a: RunsArgs) -> Result<ExitCode> {
    use mosic_trainer::run::compare;
    let (runs, notes) = compare::collect(&a.runs);
    for n in &notes {
        eprintln!("note: {n}");
    }
    if runs.is_empty() {
        anyhow::bail!("none of the {} arguments is a run directory", a.runs.len());
    }
    let (header, rows) = compare::table(&runs);
    if a.csv {
        print!("{}", compare::csv(&header, &rows));
    } else {
        print!("{}", compare::render(&header, &rows));
    }
    if let Some(p) = &a.plot {
        compare::plot(&runs, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
