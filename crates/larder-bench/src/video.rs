//! `larder-bench video`: preparing clips with larder against AI Toolkit's own per-clip video
//! path, side by side: frames decoded and stored per second, and peak memory of each process
//! tree while it works through the same clips.
//!
//! Generates MPEG-4 clips once (kept for later runs; larder-synth), then runs, over the same
//! files with a warm page cache:
//! - `larder prepare` of `pixels` into a fresh store (its own process, sampled);
//! - AI Toolkit's `load_and_process_video` per clip in a pool of processes, each clip's frames
//!   saved as one safetensors file (`peers/aitk_video.py`, sampled with its workers).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const PEER_SCRIPT: &str = include_str!("../peers/aitk_video.py");
const MIB: f64 = 1024.0 * 1024.0;

/// Arguments of `larder-bench video`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Clips to generate and prepare.
    #[arg(long, default_value_t = 100)]
    clips: usize,
    /// Frames in each clip (30 fps).
    #[arg(long, default_value_t = 120)]
    frames: u32,
    /// Width and height of the clips (also the bucket: no resize).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Frames each item trains with (`num_frames`, spread over the clip).
    #[arg(long, default_value_t = 33)]
    num_frames: u32,
    /// Folder for the clips and outputs.
    #[arg(long, default_value = "target/bench-video")]
    dir: PathBuf,
    /// Python with AI Toolkit's packages (OpenCV, torch, torchvision, safetensors).
    #[arg(long, default_value = "python3")]
    python: String,
    /// The AI Toolkit checkout (default: $AITK_PATH).
    #[arg(long)]
    aitk: Option<PathBuf>,
    /// Worker processes of the peer (AI Toolkit's DataLoader workers).
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Timed runs of each contender; the median is reported.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

/// One timed run: seconds, peak RSS and PSS of the process tree.
struct Measured {
    seconds: f64,
    peak_rss: u64,
    peak_pss: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.clips == 0 || args.num_frames == 0 {
        bail!("--runs, --clips and --num-frames must be at least 1");
    }
    let aitk = crate::aitk::checkout(args.aitk.as_deref())
        .context("no AI Toolkit checkout: pass --aitk PATH or set AITK_PATH")?;
    let clips = args.dir.join(format!(
        "clips-{}x{}-{}",
        args.clips, args.size, args.frames
    ));
    crate::generate_once(&clips, args.clips, "clips", |dir, i| {
        let path = dir.join(format!("clip{i:04}.mp4"));
        larder_synth::video::write_video(&path, args.size, args.size, args.frames, 30, i as u64)
            .map_err(anyhow::Error::msg)
    })?;
    let config = args.dir.join("video.yaml");
    std::fs::write(
        &config,
        format!(
            "datasets:\n  - folder_path: {:?}\n    resolution: [{}]\n    num_frames: {}\n",
            std::fs::canonicalize(&clips)?,
            args.size,
            args.num_frames
        ),
    )?;
    let script = args.dir.join("aitk_video.py");
    std::fs::write(&script, PEER_SCRIPT)?;
    let larder = crate::larder_exe()?;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let store = args.dir.join(format!("store-{run}"));
        let _ = std::fs::remove_dir_all(&store);
        let mut command = Command::new(&larder);
        command
            .args(["prepare", "--json", "--out"])
            .arg(&store)
            .arg(&config);
        let (measured, stdout) = sampled(command, "larder prepare", &args.dir)?;
        let report: serde_json::Value =
            serde_json::from_slice(&stdout).context("reading larder's report")?;
        if report["items"].as_u64() != Some(args.clips as u64) {
            bail!(
                "larder prepared {} clips, expected {}",
                report["items"],
                args.clips
            );
        }
        ours.push(measured);
        let _ = std::fs::remove_dir_all(&store);

        let out = args.dir.join(format!("aitk-{run}"));
        let _ = std::fs::remove_dir_all(&out);
        let settings = format!("{{\"num_frames\": {}}}", args.num_frames);
        let mut command = Command::new(&args.python);
        command
            .arg(&script)
            .arg(&clips)
            .arg(&out)
            .arg(settings)
            .arg(args.processes.to_string())
            .env("PYTHONPATH", &aitk)
            .env("NO_ALBUMENTATIONS_UPDATE", "1")
            .env("HF_HUB_OFFLINE", "1");
        let (mut measured, stdout) = sampled(command, "AI Toolkit's video path", &args.dir)?;
        let v: serde_json::Value =
            serde_json::from_slice(&stdout).context("reading the peer's JSON")?;
        let expected = args.clips as u64 * u64::from(args.num_frames);
        if v["frames"].as_u64() != Some(expected) {
            bail!(
                "the peer stored {} frames, expected {expected}",
                v["frames"]
            );
        }
        // The peer times its own work, leaving out its interpreter's start and imports.
        measured.seconds = v["seconds"].as_f64().context("the peer printed no time")?;
        theirs.push(measured);
        let _ = std::fs::remove_dir_all(&out);
    }
    let (l, p) = (median(&ours), median(&theirs));
    let frames = (args.clips as u64 * u64::from(args.num_frames)) as f64;
    println!();
    println!(
        "prepare {} clips of {} frames at {}x{} (MPEG-4), {} frames each (median of {} runs, warm page cache, {} cores)",
        args.clips,
        args.frames,
        args.size,
        args.size,
        args.num_frames,
        args.runs,
        rayon::current_num_threads()
    );
    println!(
        "{:<48} {:>10} {:>9} {:>13} {:>13}",
        "contender", "frames/s", "seconds", "peak RSS MiB", "peak PSS MiB"
    );
    for (name, m) in [
        ("larder prepare (threads, one shard writer)".to_owned(), &l),
        (
            format!("AI Toolkit (OpenCV + PIL, {} processes)", args.processes),
            &p,
        ),
    ] {
        println!(
            "{:<48} {:>10.1} {:>9.2} {:>13.0} {:>13.0}",
            name,
            frames / m.seconds,
            m.seconds,
            m.peak_rss as f64 / MIB,
            m.peak_pss as f64 / MIB
        );
    }
    println!(
        "larder vs AI Toolkit: {:.1}x the frames/s, {:.2}x the peak PSS",
        p.seconds / l.seconds,
        l.peak_pss as f64 / p.peak_pss.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` to the end, sampling its process tree's memory; its wall time, peaks and
/// standard output (its output files are kept in `dir`).
fn sampled(mut command: Command, what: &str, dir: &Path) -> anyhow::Result<(Measured, Vec<u8>)> {
    let out_path = dir.join("stdout.log");
    let err_path = dir.join("stderr.log");
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let (status, peak_rss, peak_pss) =
        crate::memory::wait_sampled(&mut child, Duration::from_millis(50))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{what} failed ({status}): {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    Ok((
        Measured {
            seconds,
            peak_rss,
            peak_pss,
        },
        std::fs::read(&out_path)?,
    ))
}

/// The run of median time (its memory with it).
fn median(runs: &[Measured]) -> &Measured {
    let mut order: Vec<&Measured> = runs.iter().collect();
    order.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    order[order.len() / 2]
}
