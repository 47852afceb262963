//! `larder-bench fastload`: how fast a safetensors checkpoint gets into memory by each of larder's
//! load paths, side by side with `safetensors.numpy.load_file` and `safetensors.torch.load_file`
//! in the same run, cold (page cache emptied before every run) and warm.
//!
//! Every contender's time includes touching one byte of every 4 KiB page of every tensor, so a
//! loader that only maps the file (and reads it later, on first use) pays for its reads here
//! as it would in training.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use larder::fastload::{Checkpoint, Eviction, LoadOptions, LoadPath, evict, write_synthetic};

/// The peer: imports first (not timed), then times one load_file and the page touch, and
/// prints the seconds.
const PEER_SCRIPT: &str = r#"
import json, sys, time
kind, path, device = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "numpy":
    from safetensors.numpy import load_file
    def touch(t):
        return int(t.reshape(-1).view("uint8")[::4096].sum()) if t.size else 0
    start = time.perf_counter()
    tensors = load_file(path)
else:
    import torch
    from safetensors.torch import load_file
    def touch(t):
        return int(t.reshape(-1).view(torch.uint8)[::4096].sum()) if t.numel() else 0
    start = time.perf_counter()
    tensors = load_file(path, device=device)
    if device != "cpu":
        torch.cuda.synchronize()
if device == "cpu":
    sum(touch(t) for t in tensors.values())
print(json.dumps({"seconds": time.perf_counter() - start}))
"#;

/// Arguments of `larder-bench fastload`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .safetensors file or a sharded checkpoint's .json index.
    path: PathBuf,
    /// Where to load: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also time safetensors.numpy.load_file and safetensors.torch.load_file with this Python
    /// (needs safetensors, numpy and torch).
    #[arg(long)]
    python: Option<String>,
    /// First write a deterministic synthetic checkpoint of this size (e.g. 4G, 512M) at PATH,
    /// unless one of that size is there already.
    #[arg(long, value_parser = crate::parse_size)]
    generate: Option<u64>,
    /// Runs per contender and cache state (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Reads in flight.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// Bytes per read, in MiB.
    #[arg(long, default_value_t = 16)]
    chunk_mib: usize,
    /// Skip the cold-cache runs.
    #[arg(long)]
    warm_only: bool,
}

/// One contender: a name and how to time one load of it.
struct Contender {
    name: String,
    run: Box<dyn Fn() -> anyhow::Result<f64>>,
}

/// Seconds for `f` plus touching every page of what it loaded.
fn larder_host(path: PathBuf, options: LoadOptions) -> impl Fn() -> anyhow::Result<f64> {
    move || {
        let start = Instant::now();
        let ckpt = Checkpoint::open(&path)?;
        let host = ckpt.load(&options)?;
        let mut sum = 0u64;
        for name in ckpt.names() {
            let t = host.get(&ckpt, name).context("a name without a view")?;
            sum += t
                .data()
                .iter()
                .step_by(4096)
                .map(|&b| u64::from(b))
                .sum::<u64>();
        }
        std::hint::black_box(sum);
        Ok(start.elapsed().as_secs_f64())
    }
}

fn larder_device(
    path: PathBuf,
    ordinal: usize,
    options: LoadOptions,
) -> impl Fn() -> anyhow::Result<f64> {
    move || {
        let start = Instant::now();
        let ckpt = Checkpoint::open(&path)?;
        let loaded = ckpt.load_to(ordinal, &options)?;
        std::hint::black_box(&loaded);
        Ok(start.elapsed().as_secs_f64())
    }
}

fn peer(
    python: String,
    kind: &'static str,
    file: PathBuf,
    device: String,
) -> impl Fn() -> anyhow::Result<f64> {
    move || {
        let out = Command::new(&python)
            .args(["-c", PEER_SCRIPT, kind])
            .arg(&file)
            .arg(&device)
            .output()
            .with_context(|| format!("running {python}"))?;
        if !out.status.success() {
            bail!(
                "safetensors.{kind}.load_file failed (pip install safetensors numpy torch): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("reading the peer's JSON")?;
        v["seconds"].as_f64().context("the peer printed no seconds")
    }
}

/// A permutation of `0..n` for run `run`: deterministic, and different from run to run
/// (Fisher-Yates driven by an LCG seeded with the run).
fn run_order(n: usize, run: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = (run as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..n).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        order.swap(i, ((state >> 33) % (i as u64 + 1)) as usize);
    }
    order
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(size) = args.generate {
        let have = std::fs::metadata(&args.path).map(|m| m.len()).ok();
        if have.is_none_or(|n| n.abs_diff(size) > 1 << 20) {
            eprintln!(
                "writing a synthetic checkpoint of {size} bytes to {}...",
                args.path.display()
            );
            let n = write_synthetic(&args.path, size, 0)?;
            eprintln!("wrote {n} tensors");
        }
    }
    let ckpt = Checkpoint::open(&args.path)?;
    let files: Vec<PathBuf> = ckpt.files().map(Path::to_path_buf).collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let ordinal = match args.device.as_str() {
        "cpu" => None,
        "cuda" => Some(0),
        d => Some(
            d.strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("--device must be cpu or cuda:N, not {d:?}"))?,
        ),
    };
    let base = LoadOptions {
        threads: args.threads,
        chunk_bytes: args.chunk_mib << 20,
        ..LoadOptions::default()
    };
    let probe = larder::cuda::probe_for(&files[0]);
    let mut contenders: Vec<Contender> = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    let path = args.path.clone();
    match ordinal {
        None => {
            contenders.push(Contender {
                name: "larder (default: O_DIRECT when cold)".into(),
                run: Box::new(larder_host(path.clone(), base.clone())),
            });
            contenders.push(Contender {
                name: "larder plain (page cache)".into(),
                run: Box::new(larder_host(
                    path.clone(),
                    LoadOptions {
                        direct: Some(false),
                        ..base.clone()
                    },
                )),
            });
            contenders.push(Contender {
                name: "larder direct (O_DIRECT)".into(),
                run: Box::new(larder_host(
                    path.clone(),
                    LoadOptions {
                        direct: Some(true),
                        ..base.clone()
                    },
                )),
            });
            if probe.pinned_usable {
                contenders.push(Contender {
                    name: "larder pinned (page-locked)".into(),
                    run: Box::new(larder_host(
                        path.clone(),
                        LoadOptions {
                            pinned: true,
                            ..base.clone()
                        },
                    )),
                });
            } else {
                unavailable.push(format!(
                    "larder pinned: {}",
                    probe
                        .driver_error
                        .clone()
                        .unwrap_or_else(|| "no GPU".into())
                ));
            }
        }
        Some(n) => {
            larder::cuda::Device::open(n).with_context(|| format!("--device {}", args.device))?;
            for p in [LoadPath::Cufile, LoadPath::Pinned, LoadPath::Plain] {
                if p == LoadPath::Cufile && !probe.gds_usable {
                    unavailable.extend(
                        probe
                            .unavailable
                            .iter()
                            .filter(|u| u.starts_with("cufile"))
                            .cloned(),
                    );
                    continue;
                }
                contenders.push(Contender {
                    name: format!("larder {} to cuda:{n}", p.name()),
                    run: Box::new(larder_device(
                        path.clone(),
                        n,
                        LoadOptions {
                            only: Some(p),
                            ..base.clone()
                        },
                    )),
                });
            }
        }
    }
    let peer_file = files[0].clone();
    if let Some(python) = &args.python {
        if files.len() > 1 {
            unavailable.push("safetensors peers: they load one file, not a sharded index".into());
        } else {
            if ordinal.is_none() {
                contenders.push(Contender {
                    name: "safetensors.numpy.load_file".into(),
                    run: Box::new(peer(
                        python.clone(),
                        "numpy",
                        peer_file.clone(),
                        args.device.clone(),
                    )),
                });
            }
            contenders.push(Contender {
                name: format!("safetensors.torch.load_file({})", args.device),
                run: Box::new(peer(
                    python.clone(),
                    "torch",
                    peer_file.clone(),
                    args.device.clone(),
                )),
            });
        }
    }

    // Round-robin: each run times every contender once, so that a change in the machine's load
    // during the benchmark (it is shared) falls on all of them alike; and each run takes them in
    // a different order, because a load is measurably slower right after another process has
    // paged the whole file in (even with the cache emptied in between), which would otherwise
    // always fall on the same contender.
    let mut eviction: Option<Eviction> = None;
    let n = contenders.len();
    let mut cold_runs: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut warm_runs: Vec<Vec<f64>> = vec![Vec::new(); n];
    for run in 0..args.runs.max(1) {
        eprintln!("run {} of {}...", run + 1, args.runs);
        for i in run_order(n, run) {
            let c = &contenders[i];
            if !args.warm_only {
                for f in &files {
                    eviction = Some(evict(f)?);
                }
                cold_runs[i].push((c.run)()?);
            }
            // Warm: the page cache holds whatever this contender's own previous load left
            // there (after an O_DIRECT load, nothing), as it would for a second load.
            (c.run)()?;
            warm_runs[i].push((c.run)()?);
        }
    }
    let cold: Vec<f64> = cold_runs.into_iter().map(crate::median).collect();
    let warm: Vec<f64> = warm_runs.into_iter().map(crate::median).collect();

    let gb = bytes as f64 / 1e9;
    println!(
        "load-bench: {} ({:.2} GB in {} file(s)) to {}, median of {} runs, {} threads x {} MiB reads, {} cores",
        args.path.display(),
        gb,
        files.len(),
        args.device,
        args.runs,
        args.threads,
        args.chunk_mib,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    match eviction {
        Some(e) => println!(
            "cold: page cache emptied before every run by {}",
            e.describe()
        ),
        None => println!("cold: not measured"),
    }
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>9}",
        "contender", "cold GB/s", "warm GB/s", "cold s", "warm s"
    );
    for (i, c) in contenders.iter().enumerate() {
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>9.3} {:>9.3}",
            c.name,
            gb / cold[i],
            gb / warm[i],
            cold[i],
            warm[i]
        );
    }
    for u in &unavailable {
        println!("unavailable: {u}");
    }
    if ordinal.is_none() {
        // Which path the default took, cold and warm (it decides per file).
        let default_path = |cold: bool| -> anyhow::Result<&'static str> {
            if cold {
                for f in &files {
                    evict(f)?;
                }
            }
            Ok(ckpt.load(&base)?.report().path.name())
        };
        println!(
            "larder's default took: {} when cold, {} when warm",
            if args.warm_only {
                "-"
            } else {
                default_path(true)?
            },
            default_path(false)?
        );
    }
    // Ratios: larder's first (default) path against each peer.
    for (i, c) in contenders
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name.starts_with("safetensors"))
    {
        println!(
            "{} vs {}: cold {:.2}x, warm {:.2}x",
            contenders[0].name,
            c.name,
            cold[i] / cold[0],
            warm[i] / warm[0]
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_run_takes_every_contender_once_in_its_own_order() {
        let orders: Vec<Vec<usize>> = (0..5).map(|r| super::run_order(5, r)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        }
        orders
            .iter()
            .skip(1)
            .for_each(|o| assert_ne!(o, &orders[0]));
        assert_eq!(super::run_order(5, 3), super::run_order(5, 3));
    }
}
