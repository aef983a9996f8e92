//! `shoes-vz bench clone`: how long the agent's copy-on-write clone of a template disk takes for
//! a 1 GiB and a 64 GiB sparse image on a reflink filesystem, against `cp --reflink=always` of
//! the same files in the same run.

use crate::output::{print_json, Output};
use crate::scratch_fs::ScratchFs;
use crate::stats::{ms, p50_p95_json, percentile};
use anyhow::{bail, Context};
use shoes_vz_agent::bundle::clone_file;
use shoes_vz_agent::config::CloneMode;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GIB: u64 = 1024 * 1024 * 1024;
/// Written regions per template: the same amount of data (and so a similar extent count) in
/// both sizes, so the comparison isolates logical size.
const DATA_CHUNKS: u64 = 64;
const CHUNK: usize = 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct CloneArgs {
    /// Directory on a reflink filesystem [default: the temp dir if it has reflink, else a
    /// loop-mounted XFS image (root only)].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Clones measured per file and method.
    #[arg(long, default_value_t = 30)]
    runs: usize,
}

struct Row {
    name: &'static str,
    ours: Vec<Duration>,
    cp: Vec<Duration>,
}

pub async fn run(args: CloneArgs, output: Output) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || measure(args, output)).await?
}

fn measure(args: CloneArgs, output: Output) -> anyhow::Result<()> {
    let scratch = ScratchFs::prepare(args.dir.as_deref())?;
    let work = tempfile::tempdir_in(&scratch.dir)
        .context("cannot create a work dir on the scratch filesystem")?;
    let mut rows = Vec::new();
    for (name, size) in [("1 GiB sparse", GIB), ("64 GiB sparse", 64 * GIB)] {
        let template = work.path().join(format!("template-{}g.img", size / GIB));
        write_sparse_template(&template, size)?;
        let mut row = Row {
            name,
            ours: Vec::new(),
            cp: Vec::new(),
        };
        for run in 0..args.runs.max(1) {
            // Interleaved so drift on a noisy machine hits both methods alike.
            let dst = work.path().join(format!("ours-{run}.img"));
            let started = Instant::now();
            clone_file(&template, &dst, CloneMode::Reflink)?;
            row.ours.push(started.elapsed());
            std::fs::remove_file(&dst)?;

            let dst = work.path().join(format!("cp-{run}.img"));
            let started = Instant::now();
            let status = Command::new("cp")
                .arg("--reflink=always")
                .arg(&template)
                .arg(&dst)
                .status()?;
            row.cp.push(started.elapsed());
            if !status.success() {
                bail!("cp --reflink=always failed with {status}");
            }
            std::fs::remove_file(&dst)?;
        }
        std::fs::remove_file(&template)?;
        rows.push(row);
    }
    if output.is_json() {
        return print_json(&to_json(&scratch, args.runs, &rows));
    }
    print(&scratch, args.runs, &rows);
    Ok(())
}

/// A sparse file of `size` bytes with `DATA_CHUNKS` 1 MiB regions of data spread across it.
fn write_sparse_template(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.set_len(size)?;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let stride = size / DATA_CHUNKS;
    for index in 0..DATA_CHUNKS {
        file.seek(SeekFrom::Start(index * stride))?;
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}

fn print(scratch: &ScratchFs, runs: usize, rows: &[Row]) {
    println!(
        "clone: {runs} runs per file and method on {}",
        scratch.describe()
    );
    println!(
        "{:<14} {:>13} {:>13} {:>11} {:>11} {:>12}",
        "template", "shoes-vz p50", "shoes-vz p95", "cp p50", "cp p95", "shoes-vz/cp"
    );
    for row in rows {
        let (ours, cp) = (percentile(&row.ours, 50.0), percentile(&row.cp, 50.0));
        println!(
            "{:<14} {:>13} {:>13} {:>11} {:>11} {:>12}",
            row.name,
            ms(ours),
            ms(percentile(&row.ours, 95.0)),
            ms(cp),
            ms(percentile(&row.cp, 95.0)),
            ratio(ours, cp)
        );
    }
    if let [small, large] = rows {
        println!(
            "64 GiB / 1 GiB (shoes-vz p50): {}   (target <= 1.5)",
            ratio(percentile(&large.ours, 50.0), percentile(&small.ours, 50.0))
        );
    }
    println!("shoes-vz/cp target <= 0.5 (times in ms)");
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio_value(a, b).map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

fn ratio_value(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => Some(a.as_secs_f64() / b.as_secs_f64()),
        _ => None,
    }
}

fn to_json(scratch: &ScratchFs, runs: usize, rows: &[Row]) -> serde_json::Value {
    let p50 = |samples: &[Duration]| percentile(samples, 50.0);
    let templates: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "template": row.name,
                "shoes_vz_ms": p50_p95_json(&row.ours),
                "cp_ms": p50_p95_json(&row.cp),
                "shoes_vz_over_cp_p50": ratio_value(p50(&row.ours), p50(&row.cp)),
            })
        })
        .collect();
    let large_over_small = match rows {
        [small, large] => ratio_value(p50(&large.ours), p50(&small.ours)),
        _ => None,
    };
    serde_json::json!({
        "runs": runs,
        "filesystem": scratch.describe(),
        "templates": templates,
        "large_over_small_p50": large_over_small,
    })
}
