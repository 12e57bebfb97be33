//! The report as self-contained HTML: `report.html` in every run directory
//! ([`write_run_page`], at the end of each run) and one page across runs
//! (`runner report --html`, [`runs_page`]). Plots are plotters' SVG inlined
//! into the page; nothing is fetched when the page opens.

mod charts;
mod page;
mod run_files;
mod run_page;
mod runs_page;

use std::path::{Path, PathBuf};

use super::Report;

/// The name of a run directory's page.
pub const RUN_PAGE: &str = "report.html";

/// Writes (atomically) `report.html` into the run directory `dir` from the
/// files the run wrote there.
pub fn write_run_page(dir: &Path) -> anyhow::Result<PathBuf> {
    let files = run_page::RunFiles::read(dir)?;
    let html = run_page::render(&files)?;
    let path = dir.join(RUN_PAGE);
    crate::cache::write_atomic(&path, html.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: cannot be written: {e}", path.display()))?;
    Ok(path)
}

/// The page across the runs of `report`, for writing at `out`.
pub fn runs_page(report: &Report, runs_root: &Path, out: &Path) -> anyhow::Result<String> {
    runs_page::render(report, runs_root, out)
}
