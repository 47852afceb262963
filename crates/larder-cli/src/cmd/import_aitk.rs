//! `larder import-aitk`: AI Toolkit's latent, text-embedding and CLIP-vision caches into a store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use larder::encode::EncoderIdentity;
use larder::store::codec::Codec;
use larder::{AitkImportOptions, Config, ImportCounts, Prepare, PrepareOptions};

/// Arguments of `larder import-aitk`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An AI Toolkit job file, a YAML file with a `datasets:` list, or a folder of images.
    config: PathBuf,
    /// The store folder to create or update (a local folder: push it to object storage after).
    #[arg(long)]
    out: String,
    /// AI Toolkit's model architecture (latent_space_version), e.g. flux, sdxl; read from the
    /// latent caches when not given.
    #[arg(long)]
    arch: Option<String>,
    /// Identity to store the latents under: the one your VAE encoder declares, so a later
    /// prepare with it reuses them (default ai-toolkit/<arch>).
    #[arg(long)]
    latent_identity: Option<String>,
    /// The scaling factor AI Toolkit applied to the latents (recorded in the identity).
    #[arg(long)]
    scaling_factor: Option<f64>,
    /// The shift factor AI Toolkit applied to the latents (recorded in the identity).
    #[arg(long)]
    shift_factor: Option<f64>,
    /// Identity to store the text embeddings under (default ai-toolkit/<arch>/text).
    #[arg(long)]
    text_identity: Option<String>,
    /// Identity to store the CLIP embeddings under (default ai-toolkit/clip/<encoder path>).
    #[arg(long)]
    clip_identity: Option<String>,
    /// Codec of imported latents and CLIP embeddings: bf16, f16, f32, fp8, int8, +zstd.
    #[arg(long, default_value = "bf16", value_parser = super::store::parse_codec)]
    latent_codec: Codec,
    /// Codec of imported text embeddings.
    #[arg(long, default_value = "bf16", value_parser = super::store::parse_codec)]
    text_codec: Codec,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    let identity = |id: Option<String>, scale, shift| {
        id.map(|id| EncoderIdentity {
            id,
            scaling_factor: scale,
            shift_factor: shift,
        })
    };
    let prepare = PrepareOptions {
        latent_codec: args.latent_codec,
        text_codec: args.text_codec,
        progress: !args.json,
        ..PrepareOptions::default()
    };
    let options = AitkImportOptions {
        arch: args.arch,
        latent: (
            "latent".into(),
            identity(args.latent_identity, args.scaling_factor, args.shift_factor),
        ),
        text: ("text".into(), identity(args.text_identity, None, None)),
        clip: ("clip".into(), identity(args.clip_identity, None, None)),
    };
    let report = Prepare::new(&config)
        .options(prepare)
        .import_aitk(args.out.as_str(), &options)
        .with_context(|| format!("importing into {}", args.out))?;
    if args.json {
        super::print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} items; architecture {}",
        args.out,
        report.prepare.items,
        report
            .arch
            .as_deref()
            .unwrap_or("unknown (no latent cache matched)")
    )?;
    let line = |name: &str, c: &ImportCounts| {
        format!(
            "{name:<16} {} imported, {} already in the store, {} mismatched, {} without a cache",
            c.imported, c.stored, c.mismatched, c.missing
        )
    };
    writeln!(out, "{}", line("latents", &report.latents))?;
    writeln!(out, "{}", line("text embeddings", &report.texts))?;
    writeln!(out, "{}", line("clip vision", &report.clip))?;
    if !report.mismatches.is_empty() {
        writeln!(out, "not imported ({}):", report.mismatches.len())?;
        for m in report.mismatches.iter().take(20) {
            writeln!(out, "  {} {}: {}", m.kind, m.cache, m.reason)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
