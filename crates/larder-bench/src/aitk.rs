//! `larder-bench aitk`: AI Toolkit's own trainer fed by its own data loader against the same
//! trainer fed by larder's drop-in (`python -m larder.aitk run`), on the same job and images.
//!
//! The job is a LoRA on a tiny random SD1.5 model (the drop-in tests' fixtures, built once),
//! trained on the CPU over generated JPEGs and PNGs of a few sizes (so there are several
//! buckets), latents cached to disk, AI Toolkit's loader with worker processes. Each contender
//! runs in a process of its own started by `peers/aitk_train.py`, first with no cache (AI
//! Toolkit's `_latent_cache` and size database, larder's store, all deleted) and then warm (the
//! caches kept, a new training folder, so both start at step 0). Measured, the same way for
//! both:
//! - seconds from spawning the process to the trainer's first training step;
//! - the time the trainer waits for each batch (AI Toolkit's own `get_batch` timers in its
//!   training loop), median and mean over the steps after the first;
//! - the training step's own seconds (median after the first): AI Toolkit's workers share the
//!   cores with it;
//! - the peak, over the run, of RSS and of PSS summed over the process and all its
//!   descendants (AI Toolkit's DataLoader workers), read from `/proc/<pid>/smaps_rollup`.
//!
//! Both run with OpenMP's threads waiting passively (`OMP_WAIT_POLICY=PASSIVE`) unless told
//! otherwise: on a machine with few cores, torch's spinning threads otherwise take the cores
//! from whatever else runs, and the figures measure that instead (docs/benchmarks.md).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

const PEER_SCRIPT: &str = include_str!("../peers/aitk_train.py");

/// Where AI Toolkit caches what it learns about a dataset folder, inside the folder: the
/// latents (`cache_latents_to_disk`) and the image sizes. A fresh run starts without them.
const AITK_CACHES: [&str; 2] = ["_latent_cache", ".aitk_size.json"];

/// Bytes in a mebibyte, for the figures printed.
const MIB: f64 = 1024.0 * 1024.0;

/// Arguments of `larder-bench aitk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The AI Toolkit checkout (default: $AITK_PATH).
    #[arg(long)]
    aitk: Option<PathBuf>,
    /// Images to generate (three JPEGs to one PNG, four sizes).
    #[arg(long, default_value_t = 240)]
    images: usize,
    /// The job's resolution.
    #[arg(long, default_value_t = 256)]
    resolution: u32,
    /// The job's batch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Training steps per run.
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// AI Toolkit's DataLoader worker processes (`num_workers`).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs of each contender, fresh and warm; the medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Milliseconds between memory samples, at least (a sample of a large process takes tens
    /// of milliseconds of kernel time, and the sampler keeps to 10% of a core).
    #[arg(long, default_value_t = 50)]
    sample_ms: u64,
    /// OpenMP's wait policy for both contenders' torch threads; `inherit` leaves the
    /// environment's (OpenMP's default spins).
    #[arg(long, default_value = "PASSIVE")]
    omp_wait_policy: String,
    /// Folder for the images, the model, the job and the runs (images and model are kept).
    #[arg(long, default_value = "target/bench-aitk")]
    dir: PathBuf,
    /// The drop-in's test fixtures (aitk_fixtures.py), which build the model and the job.
    #[arg(long, default_value = "bindings/python/tests")]
    fixtures: PathBuf,
    /// Python interpreter with larder, torch, diffusers and AI Toolkit's requirements.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// The AI Toolkit checkout `--aitk` names, else `$AITK_PATH`'s; `None` where neither is set.
pub fn checkout(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AITK_PATH").map(PathBuf::from))
}

/// The two data paths under AI Toolkit's trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// AI Toolkit's own DataLoader over its dataset classes.
    Aitk,
    /// larder's drop-in, `python -m larder.aitk run`.
    Larder,
}

impl Contender {
    /// The peer's name for it.
    fn arg(self) -> &'static str {
        match self {
            Contender::Aitk => "aitk",
            Contender::Larder => "larder",
        }
    }
}

/// What one training run measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Seconds from spawning the process to the trainer's first training step.
    to_first_step: f64,
    /// Seconds waited for a batch per step after the first: median and mean.
    wait_median: f64,
    wait_mean: f64,
    /// Seconds of a training step after the first (its batch in hand), median.
    step_median: f64,
    /// Peak bytes of RSS and PSS summed over the process tree.
    peak_rss: u64,
    peak_pss: u64,
    /// Seconds from spawning the process to its exit (model load, caching, steps, saving).
    total: f64,
}

/// What every training run shares: the job written for both contenders and where it runs.
struct Bench {
    /// The AI Toolkit checkout, absolute.
    aitk: PathBuf,
    /// The benchmark's folder (`--dir`), absolute: the runs' working folder.
    dir: PathBuf,
    /// The peer script, written into `dir`.
    script: PathBuf,
    /// The job file, one for both contenders.
    job: PathBuf,
    /// The environment the runs need (offline, CPU), from the drop-in tests' fixtures.
    env: Vec<(String, String)>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.images == 0 || args.batch == 0 || args.steps < 2 {
        bail!("--runs, --images and --batch must be at least 1, --steps at least 2");
    }
    let aitk = checkout(args.aitk.as_deref())
        .context("no AI Toolkit checkout: pass --aitk PATH or set AITK_PATH")?;
    // The runs work in their own folder.
    let aitk = std::path::absolute(&aitk)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let images = dir.join(format!("images-{}", args.images));
    generate(&images, args.images)?;
    let script = dir.join("aitk_train.py");
    std::fs::write(&script, PEER_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let store = dir.join("larder-store");
    let bench = write_job(&args, aitk, dir, script, &images, &store)?;

    let mut results: Vec<((Contender, bool), Measured)> = Vec::new();
    for run in 0..args.runs {
        // Alternate which contender goes first, so neither always follows the other's load.
        let mut order = [Contender::Aitk, Contender::Larder];
        if run % 2 == 1 {
            order.reverse();
        }
        for contender in order {
            // Every cache goes, AI Toolkit's and larder's: a fresh run is a first run.
            for path in AITK_CACHES
                .iter()
                .map(|c| images.join(c))
                .chain([store.clone()])
            {
                remove(&path)?;
            }
            for warm in [false, true] {
                let state = if warm { "warm" } else { "fresh" };
                eprintln!(
                    "run {}/{}: {} ({state})...",
                    run + 1,
                    args.runs,
                    contender.arg()
                );
                let name = format!("{}-{state}-{}", contender.arg(), run + 1);
                let m = train(&args, &bench, contender, &name)
                    .with_context(|| format!("{} ({state}), run {}", contender.arg(), run + 1))?;
                eprintln!(
                    "  {:.1} s to the first step, waits {:.2} ms (median), steps {:.2} s, peak RSS {:.0} MiB, PSS {:.0} MiB, {:.0} s in all",
                    m.to_first_step,
                    m.wait_median * 1e3,
                    m.step_median,
                    m.peak_rss as f64 / MIB,
                    m.peak_pss as f64 / MIB,
                    m.total
                );
                results.push(((contender, warm), m));
            }
        }
    }
    print_table(&args, &results);
    Ok(ExitCode::SUCCESS)
}

/// Has the peer build the model (once) and write the job over `images`, larder's store at
/// `store`.
fn write_job(
    args: &Args,
    aitk: PathBuf,
    dir: PathBuf,
    script: PathBuf,
    images: &Path,
    store: &Path,
) -> anyhow::Result<Bench> {
    let out = Command::new(&args.python)
        .arg(&script)
        .arg("job")
        .args([args.fixtures.as_path(), &aitk, &dir, images])
        .args([
            args.resolution.to_string(),
            args.batch.to_string(),
            args.steps.to_string(),
            args.workers.to_string(),
        ])
        .arg(store)
        .output()
        .with_context(|| {
            format!(
                "running {} (needs larder, torch, diffusers and AI Toolkit's requirements: pip install ./bindings/python -r scripts/requirements-aitk.txt)",
                args.python
            )
        })?;
    let v = crate::json_of(out, "the peer's job command")?;
    let job = PathBuf::from(v["job"].as_str().context("the peer named no job file")?);
    let env = v["env"]
        .as_object()
        .context("the peer gave no environment")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    Ok(Bench {
        aitk,
        dir,
        script,
        job,
        env,
    })
}

/// Runs the job once with `contender` in a new training folder, sampling the memory of its
/// process tree until it exits. Its output and report are kept as `<dir>/logs/<name>.*`.
fn train(args: &Args, bench: &Bench, contender: Contender, name: &str) -> anyhow::Result<Measured> {
    // The job's training folder (the peer's `job` puts it there): no checkpoint to resume.
    remove(&bench.dir.join("runs"))?;
    let logs = bench.dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let report = logs.join(format!("{name}.json"));
    remove(&report)?;
    let log_path = logs.join(format!("{name}.log"));
    let log = File::create(&log_path)?;
    // The run's folder is its working folder; a relative interpreter path is the caller's.
    let python = if args.python.contains(std::path::MAIN_SEPARATOR) {
        std::path::absolute(&args.python)?
    } else {
        PathBuf::from(&args.python)
    };
    let mut command = Command::new(python);
    command
        .arg(&bench.script)
        .args(["train", contender.arg()])
        .args([&bench.aitk, &bench.job, &report])
        .current_dir(&bench.dir)
        .env_clear()
        .envs(bench.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let spawned_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let started = Instant::now();
    if args.omp_wait_policy != "inherit" {
        command.env("OMP_WAIT_POLICY", &args.omp_wait_policy);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", args.python))?;
    let (status, peak_rss, peak_pss) =
        crate::memory::wait_sampled(&mut child, Duration::from_millis(args.sample_ms))?;
    let total = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "the training run failed ({status}); its output is in {}",
            log_path.display()
        );
    }
    let text = std::fs::read_to_string(&report).with_context(|| {
        format!(
            "reading {} (output: {})",
            report.display(),
            log_path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let first_step_at = v["first_step_at"]
        .as_f64()
        .with_context(|| format!("the run took no step (output: {})", log_path.display()))?;
    // Every step after the first, which pays for first-use work (allocations, workers).
    let after_first = |key: &str| -> anyhow::Result<Vec<f64>> {
        let v: Vec<f64> = v[key]
            .as_array()
            .with_context(|| format!("the report has no {key}"))?
            .iter()
            .skip(1)
            .filter_map(serde_json::Value::as_f64)
            .collect();
        if v.is_empty() {
            bail!("the run took one step: nothing after the first to measure");
        }
        Ok(v)
    };
    let waits = after_first("data_wait")?;
    let wait_mean = waits.iter().sum::<f64>() / waits.len() as f64;
    Ok(Measured {
        to_first_step: first_step_at - spawned_at,
        wait_median: crate::median(waits),
        wait_mean,
        step_median: crate::median(after_first("step_seconds")?),
        peak_rss,
        peak_pss,
        total,
    })
}

/// Removes a file or a folder; one that is not there is fine.
fn remove(path: &Path) -> anyhow::Result<()> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes `n` images with captions, unless already there: three JPEGs to one PNG, at four
/// sizes (square, landscape, portrait, wide), so a job at 256 or 512 has several buckets.
fn generate(dir: &Path, n: usize) -> anyhow::Result<()> {
    const SIZES: [(u32, u32); 4] = [(640, 640), (768, 512), (512, 768), (896, 512)];
    crate::generate_once(dir, n, "images", |dir, i| {
        let (w, h) = SIZES[i % SIZES.len()];
        let ext = if i % 4 == 3 { "png" } else { "jpg" };
        larder_synth::write_image(&dir.join(format!("img_{i:05}.{ext}")), w, h, i as u64)?;
        std::fs::write(
            dir.join(format!("img_{i:05}.txt")),
            format!("a photo of thing {i}"),
        )?;
        Ok(())
    })
}

/// Prints each contender's medians, fresh and warm, and AI Toolkit's figure over larder's.
fn print_table(args: &Args, results: &[((Contender, bool), Measured)]) {
    let median = |key: (Contender, bool), f: fn(&Measured) -> f64| -> f64 {
        crate::median(
            results
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, m)| f(m))
                .collect(),
        )
    };
    type Column = (&'static str, fn(&Measured) -> f64);
    let columns: [Column; 7] = [
        ("to 1st step s", |m| m.to_first_step),
        ("wait ms med", |m| m.wait_median * 1e3),
        ("wait ms mean", |m| m.wait_mean * 1e3),
        ("step s med", |m| m.step_median),
        ("peak RSS MiB", |m| m.peak_rss as f64 / MIB),
        ("peak PSS MiB", |m| m.peak_pss as f64 / MIB),
        ("total s", |m| m.total),
    ];
    println!();
    println!(
        "AI Toolkit's SD trainer, tiny SD1.5 LoRA on the CPU: {} images at {}, batch {}, {} steps (median of {} runs, {} cores)",
        args.images,
        args.resolution,
        args.batch,
        args.steps,
        args.runs,
        std::thread::available_parallelism().map_or(1, |c| c.get())
    );
    println!(
        "wait: the trainer's wait for a batch, step: the step itself, both over the steps after the first; RSS, PSS: summed over the process and its workers; OMP_WAIT_POLICY: {}",
        args.omp_wait_policy
    );
    print!("{:<44} {:<6}", "contender", "cache");
    for (name, _) in &columns {
        print!(" {name:>13}");
    }
    println!();
    let names = [
        (
            Contender::Aitk,
            format!("AI Toolkit's loader ({} workers, disk cache)", args.workers),
        ),
        (
            Contender::Larder,
            "larder (python -m larder.aitk run)".to_owned(),
        ),
    ];
    for (contender, name) in &names {
        for warm in [false, true] {
            print!("{name:<44} {:<6}", if warm { "warm" } else { "fresh" });
            for (_, f) in &columns {
                print!(" {:>13.2}", median((*contender, warm), *f));
            }
            println!();
        }
    }
    for warm in [false, true] {
        print!(
            "{:<44} {:<6}",
            "AI Toolkit / larder",
            if warm { "warm" } else { "fresh" }
        );
        for (_, f) in &columns {
            let ratio = median((Contender::Aitk, warm), *f) / median((Contender::Larder, warm), *f);
            print!(" {:>12.2}x", ratio);
        }
        println!();
    }
}
