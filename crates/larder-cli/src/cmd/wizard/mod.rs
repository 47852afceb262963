//! `larder wizard`: asks about the GPU, RAM, dataset, goal and model, then writes an AI Toolkit
//! job file with larder's options, and says why each value was chosen.

mod rules;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use larder::diagnose::{FAMILIES, Family, SystemMemory, family, human};
use larder::{CaptionSource, Config};

use rules::{Answers, Choice, DatasetFacts};

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Goal {
    /// A LoRA adapter.
    Lora,
    /// Every weight of the model.
    Full,
}

/// Arguments of `larder wizard`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ask nothing: every answer comes from the flags (--gpu, --dataset and --model are
    /// required then).
    #[arg(long)]
    non_interactive: bool,
    /// GPU model (e.g. "RTX 4090", "A100 40GB") or its memory in GB.
    #[arg(long)]
    gpu: Option<String>,
    /// System RAM in GB; this machine's by default.
    #[arg(long, value_name = "GB")]
    ram_gb: Option<f64>,
    /// The folder of training images (with caption files beside them).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// What to train.
    #[arg(long, value_enum)]
    goal: Option<Goal>,
    /// Model family (sd15, sd2, sdxl, ssd, vega, pixart, sd3, sd35-medium, sd35-large, flux,
    /// lumina2, chroma, hidream, qwen-image, wan21-14b, wan22-14b, wan22-5b).
    #[arg(long = "model", value_name = "FAMILY")]
    model: Option<String>,
    /// Where to write the job file.
    #[arg(long, default_value = "larder-job.yaml")]
    out: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
}

/// The name of the first NVIDIA GPU, from the driver's files (no CUDA library is loaded).
fn detected_gpu() -> Option<String> {
    let dir = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    dir.flatten().find_map(|gpu| {
        let text = std::fs::read_to_string(gpu.path().join("information")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Model:"))
            .map(|m| m.trim().to_owned())
    })
}

/// Scans `folder` with larder's scan: images, bytes, sizes and captions.
fn facts_of(folder: &Path) -> anyhow::Result<DatasetFacts> {
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    let report = larder::scan(&Config::for_folder(folder))
        .with_context(|| format!("scanning {}", folder.display()))?;
    let images = report.datasets.first().map_or(&[][..], |d| &d.images[..]);
    if images.is_empty() {
        bail!(
            "{} holds no usable images (jpg, png, webp): nothing to train on",
            folder.display()
        );
    }
    Ok(DatasetFacts {
        images: images.len(),
        bytes: images.iter().map(|i| i.bytes).sum(),
        sides: images
            .iter()
            .map(|i| (f64::from(i.width) * f64::from(i.height)).sqrt())
            .collect(),
        captioned: images
            .iter()
            .filter(|i| i.caption_source == CaptionSource::File)
            .count(),
        shapes: images.iter().fold((0, 0, 0), |(sq, la, po), i| {
            let ratio = f64::from(i.width) / f64::from(i.height.max(1));
            match ratio {
                r if r > 1.1 => (sq, la + 1, po),
                r if r < 1.0 / 1.1 => (sq, la, po + 1),
                _ => (sq + 1, la, po),
            }
        }),
    })
}

/// "12 images, 3.4 MB; 5 square, 4 landscape, 3 portrait; ...".
fn describe(facts: &DatasetFacts) -> String {
    let (square, landscape, portrait) = facts.shapes;
    format!(
        "{} images, {}; {square} square, {landscape} landscape, {portrait} portrait; median size {:.0} px (equal-area side); {} with a caption file",
        facts.images,
        human(facts.bytes),
        facts.median_side(),
        facts.captioned
    )
}

/// Everything gathered, before the rules run.
struct Gathered {
    gpu: String,
    answers: Answers,
    dataset: PathBuf,
    facts: DatasetFacts,
    out: PathBuf,
}

fn family_named(name: &str) -> anyhow::Result<&'static Family> {
    family(name).with_context(|| {
        format!(
            "unknown model family {name:?}: expected one of {}",
            FAMILIES
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn vram(gpu: &str) -> anyhow::Result<u64> {
    rules::vram_of(gpu).with_context(|| {
        format!("unknown GPU {gpu:?}: give its memory in GB instead (e.g. --gpu 24)")
    })
}

fn machine_ram() -> f64 {
    SystemMemory::read().map_or(16.0, |m| m.total as f64 / 1e9)
}

fn gather_flags(args: &Args) -> anyhow::Result<Gathered> {
    let need = |what: &str| format!("--non-interactive needs {what}");
    let gpu = args.gpu.clone().with_context(|| need("--gpu"))?;
    let dataset = args.dataset.clone().with_context(|| need("--dataset"))?;
    let model = args.model.clone().with_context(|| need("--model"))?;
    let facts = facts_of(&dataset)?;
    println!("scanned {}: {}", dataset.display(), describe(&facts));
    Ok(Gathered {
        answers: Answers {
            vram: vram(&gpu)?,
            ram: (args.ram_gb.unwrap_or_else(machine_ram) * 1e9) as u64,
            lora: args.goal.unwrap_or(Goal::Lora) == Goal::Lora,
            family: family_named(&model)?,
        },
        gpu,
        dataset,
        facts,
        out: args.out.clone(),
    })
}

fn gather_interactive(args: &Args) -> anyhow::Result<Gathered> {
    use inquire::validator::Validation;
    use inquire::{CustomType, Select, Text};
    let not_tty = |e: inquire::InquireError| match e {
        inquire::InquireError::NotTTY => anyhow::anyhow!(
            "the wizard needs a terminal; in scripts, pass --non-interactive with --gpu, --dataset and --model"
        ),
        e => anyhow::Error::new(e),
    };
    let gpu_default = args.gpu.clone().or_else(detected_gpu);
    let mut prompt = Text::new("GPU model or its memory in GB:")
        .with_help_message("e.g. RTX 4090, A100 40GB, or 24")
        .with_validator(|s: &str| {
            Ok(if rules::vram_of(s).is_some() {
                Validation::Valid
            } else {
                Validation::Invalid("unknown GPU: give its memory in GB, e.g. 24".into())
            })
        });
    if let Some(g) = &gpu_default {
        prompt = prompt.with_default(g);
    }
    let gpu = prompt.prompt().map_err(not_tty)?;
    let ram_gb = CustomType::<f64>::new("System RAM in GB:")
        .with_default((args.ram_gb.unwrap_or_else(machine_ram) * 10.0).round() / 10.0)
        .with_error_message("a number of GB, e.g. 64")
        .prompt()
        .map_err(not_tty)?;
    let dataset_default = args
        .dataset
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let dataset = Text::new("Dataset folder (images with caption files):")
        .with_default(&dataset_default)
        .with_validator(|s: &str| {
            Ok(if Path::new(s).is_dir() {
                Validation::Valid
            } else {
                Validation::Invalid("not a folder".into())
            })
        })
        .prompt()
        .map_err(not_tty)?;
    let dataset = PathBuf::from(dataset);
    let facts = facts_of(&dataset)?;
    println!("  scanned: {}", describe(&facts));
    let goals = vec!["LoRA", "full fine-tune"];
    let goal_start = usize::from(args.goal == Some(Goal::Full));
    let goal = Select::new("Training goal:", goals)
        .with_starting_cursor(goal_start)
        .prompt()
        .map_err(not_tty)?;
    let titles: Vec<String> = FAMILIES
        .iter()
        .map(|f| format!("{} ({})", f.title, f.name))
        .collect();
    let start = args
        .model
        .as_deref()
        .and_then(family)
        .and_then(|f| FAMILIES.iter().position(|g| g.name == f.name))
        .or_else(|| FAMILIES.iter().position(|f| f.name == "flux"))
        .unwrap_or(0);
    let picked = Select::new("Model family:", titles.clone())
        .with_starting_cursor(start)
        .prompt()
        .map_err(not_tty)?;
    let index = titles.iter().position(|t| *t == picked).unwrap_or(start);
    let out = Text::new("Write the job file to:")
        .with_default(&args.out.display().to_string())
        .prompt()
        .map_err(not_tty)?;
    Ok(Gathered {
        answers: Answers {
            vram: vram(&gpu)?,
            ram: (ram_gb * 1e9) as u64,
            lora: goal == "LoRA",
            family: &FAMILIES[index],
        },
        gpu,
        dataset,
        facts,
        out: PathBuf::from(out),
    })
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The job file, with each chosen value's reason as a comment above it.
fn job_yaml(g: &Gathered, dataset: &Path) -> String {
    let a = &g.answers;
    let f = a.family;
    let recipe = rules::recipe(f);
    let quantize = rules::quantize(a);
    let res = rules::resolutions(a, &g.facts);
    let largest = res.value.iter().copied().max().unwrap_or(recipe.native);
    let batch = rules::batch_size(a, quantize.value, largest);
    let workers = rules::num_workers(a, &g.facts, res.value.len(), batch.value, largest);
    let steps = rules::steps(a, &g.facts, batch.value);
    let lr = rules::learning_rate(a);
    let text_encoders: u64 = f
        .components
        .iter()
        .filter(|c| c.name.starts_with("text_encoder"))
        .map(|c| c.bytes())
        .sum();
    let cache_text = Choice {
        value: true,
        why: format!(
            "captions are encoded once and the text encoders ({} in bf16) leave memory for training",
            human(text_encoders)
        ),
    };
    let name = dataset
        .file_name()
        .map_or("dataset".into(), |n| n.to_string_lossy().into_owned())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let kind = if a.lora { "lora" } else { "finetune" };
    let mut y = String::new();
    let w = &mut y;
    let why = |w: &mut String, indent: &str, why: &str| {
        let _ = writeln!(w, "{indent}# {why}");
    };
    let _ = writeln!(
        w,
        "# Written by `larder wizard`: {} {} on {} ({} of VRAM), {} of RAM.",
        f.title,
        if a.lora { "LoRA" } else { "full fine-tune" },
        g.gpu,
        human(a.vram),
        human(a.ram)
    );
    let _ = writeln!(
        w,
        "# Each chosen value has its reason above it. Check memory with `larder diagnose <this file>`."
    );
    let _ = writeln!(
        w,
        "job: extension\nconfig:\n  name: {}",
        quoted(&format!("{name}_{kind}"))
    );
    let _ = writeln!(
        w,
        "  process:\n    - type: sd_trainer\n      training_folder: output\n      device: cuda:0"
    );
    if a.lora {
        let _ = writeln!(
            w,
            "      network:\n        type: lora\n        linear: 16\n        linear_alpha: 16"
        );
    }
    let _ = writeln!(
        w,
        "      save:\n        dtype: float16\n        save_every: 250\n        max_step_saves_to_keep: 4"
    );
    let _ = writeln!(
        w,
        "      datasets:\n        - folder_path: {}",
        quoted(&dataset.display().to_string())
    );
    let _ = writeln!(
        w,
        "          caption_ext: txt\n          caption_dropout_rate: 0.05"
    );
    why(w, "          ", &res.why);
    let _ = writeln!(
        w,
        "          resolution: [{}]",
        res.value
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    why(
        w,
        "          ",
        "latents are encoded once and kept on disk (larder's store keys them by content); in memory, every DataLoader worker would hold them in its copy of the dataset",
    );
    let _ = writeln!(w, "          cache_latents_to_disk: true");
    why(w, "          ", &cache_text.why);
    let _ = writeln!(w, "          cache_text_embeddings: {}", cache_text.value);
    why(w, "          ", &workers.why);
    let _ = writeln!(w, "          num_workers: {}", workers.value);
    let _ = writeln!(w, "      train:");
    why(w, "        ", &batch.why);
    let _ = writeln!(w, "        batch_size: {}", batch.value);
    why(w, "        ", &steps.why);
    let _ = writeln!(w, "        steps: {}", steps.value);
    let _ = writeln!(
        w,
        "        gradient_checkpointing: true\n        train_unet: true\n        train_text_encoder: false\n        optimizer: adamw8bit"
    );
    why(w, "        ", &lr.why);
    let _ = writeln!(w, "        lr: {}", lr.value);
    let _ = writeln!(w, "        dtype: bf16\n      model:");
    let _ = writeln!(w, "        name_or_path: {}", quoted(recipe.name_or_path));
    let _ = writeln!(w, "        arch: {}", f.archs[0]);
    why(w, "        ", &quantize.why);
    let _ = writeln!(w, "        quantize: {}", quantize.value);
    let _ = writeln!(
        w,
        "# larder's own settings; AI Toolkit ignores this section.\nlarder:\n  seed: 42"
    );
    y
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let gathered = if args.non_interactive {
        gather_flags(&args)?
    } else {
        gather_interactive(&args)?
    };
    if gathered.out.exists() && !args.force {
        bail!(
            "{} exists: pass --force to replace it, or --out another file",
            gathered.out.display()
        );
    }
    let dataset = std::fs::canonicalize(&gathered.dataset)
        .with_context(|| format!("resolving {}", gathered.dataset.display()))?;
    let yaml = job_yaml(&gathered, &dataset);
    // Written beside the target and read back by larder's own parser before it takes the
    // target's name, so a file that is reported written is one larder can use.
    let tmp = gathered.out.with_extension("yaml.tmp");
    std::fs::write(&tmp, &yaml).with_context(|| format!("writing {}", tmp.display()))?;
    let parsed = Config::load(&tmp);
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e)
                .context("the written config did not parse; please report this"));
        }
    };
    std::fs::rename(&tmp, &gathered.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), gathered.out.display()))?;
    println!(
        "wrote {} ({} dataset, bucket divisibility {} for {}):",
        gathered.out.display(),
        config.datasets.len(),
        config.divisibility,
        config.arch.as_deref().unwrap_or("?")
    );
    for line in yaml.lines().filter_map(|l| l.trim().strip_prefix("# ")) {
        if !line.starts_with("Written by")
            && !line.starts_with("Each chosen value")
            && !line.starts_with("larder's own")
        {
            println!("  - {line}");
        }
    }
    for w in &config.warnings {
        println!("  note: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_9_of_22_images_at_1024_px_trains_up_to_1024() {
        // The scan of a real folder: 13 images of 400 px and 9 of 1024 px. The median is
        // 400 px, but 41% of the images are larger than 512 and 768 px.
        let tmp = tempfile::tempdir().expect("tmp");
        for i in 0..22u32 {
            let side = if i < 13 { 400 } else { 1024 };
            let path = tmp.path().join(format!("i{i:02}.jpg"));
            larder_synth::write_image(&path, side, side, u64::from(i)).expect("image");
        }
        let facts = facts_of(tmp.path()).expect("facts");
        assert_eq!(facts.images, 22);
        let answers = Answers {
            vram: 24_000_000_000,
            ram: 64_000_000_000,
            lora: true,
            family: family_named("flux").expect("flux"),
        };
        let res = rules::resolutions(&answers, &facts);
        assert_eq!(res.value, [512, 768, 1024]);
        assert!(
            res.why
                .contains("9 of 22 images (41%) are larger than 512 px"),
            "{}",
            res.why
        );
    }
}
