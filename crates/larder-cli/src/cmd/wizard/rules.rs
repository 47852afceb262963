//! The rules that turn the wizard's answers into config values, each with its reason.
//!
//! The memory rules are rules of thumb for a first run, stated with their figures; the
//! batch-size tuner (`larder.BatchSizeTuner`) finds the real largest batch during training.

use larder::diagnose::{FILE_ITEM_BYTES, Family, TORCH_WORKER_BYTES, human};

/// What the wizard asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    /// GPU memory in bytes.
    pub vram: u64,
    /// System memory in bytes.
    pub ram: u64,
    /// Train a LoRA (true) or fine-tune every weight.
    pub lora: bool,
    /// The model family.
    pub family: &'static Family,
}

/// What the wizard learned of the dataset folder from larder's scan.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DatasetFacts {
    /// Usable images.
    pub images: usize,
    /// Their bytes on disk.
    pub bytes: u64,
    /// sqrt(width × height) of each image: the side of the square of equal area.
    pub sides: Vec<f64>,
    /// Images with a caption file.
    pub captioned: usize,
    /// Square (aspect within 1.1:1), landscape and portrait images.
    pub shapes: (usize, usize, usize),
}

impl DatasetFacts {
    /// The median equal-area side (0 for no images).
    pub fn median_side(&self) -> f64 {
        let mut s = self.sides.clone();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or(0.0)
    }
}

/// A chosen value and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice<T> {
    /// The value.
    pub value: T,
    /// Why it was chosen.
    pub why: String,
}

fn choice<T>(value: T, why: impl Into<String>) -> Choice<T> {
    Choice {
        value,
        why: why.into(),
    }
}

/// What the wizard needs to know of a family beyond its sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The Hugging Face repository AI Toolkit loads.
    pub name_or_path: &'static str,
    /// The resolution the model was trained at (side of the square).
    pub native: u32,
    /// GPU memory of one sample's activations at the native resolution with gradient
    /// checkpointing, in GB (rule of thumb from AI Toolkit example configs and user reports).
    pub activation_gb: f64,
}

/// The recipe of `family`.
pub fn recipe(family: &Family) -> Recipe {
    let (name_or_path, native, activation_gb) = match family.name {
        "sd15" => ("stable-diffusion-v1-5/stable-diffusion-v1-5", 512, 1.0),
        "sd2" => ("stabilityai/stable-diffusion-2-1", 768, 1.5),
        "sdxl" => ("stabilityai/stable-diffusion-xl-base-1.0", 1024, 2.5),
        "ssd" => ("segmind/SSD-1B", 1024, 2.0),
        "vega" => ("segmind/Segmind-Vega", 1024, 1.5),
        "pixart" => ("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", 1024, 1.5),
        "sd3" => ("stabilityai/stable-diffusion-3-medium-diffusers", 1024, 3.0),
        "sd35-medium" => ("stabilityai/stable-diffusion-3.5-medium", 1024, 3.0),
        "sd35-large" => ("stabilityai/stable-diffusion-3.5-large", 1024, 4.0),
        "flux" => ("black-forest-labs/FLUX.1-dev", 1024, 4.0),
        "lumina2" => ("Alpha-VLLM/Lumina-Image-2.0", 1024, 2.5),
        "chroma" => ("lodestones/Chroma1-HD", 1024, 3.5),
        "hidream" => ("HiDream-ai/HiDream-I1-Full", 1024, 5.0),
        "qwen-image" => ("Qwen/Qwen-Image", 1328, 6.0),
        "wan21-14b" => ("Wan-AI/Wan2.1-T2V-14B-Diffusers", 832, 5.0),
        "wan22-14b" => ("Wan-AI/Wan2.2-T2V-A14B-Diffusers", 832, 5.0),
        "wan22-5b" => ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 1024, 3.0),
        _ => ("", 1024, 4.0),
    };
    Recipe {
        name_or_path,
        native,
        activation_gb,
    }
}

/// The denoiser's weights (the components that are neither VAE nor text encoder).
fn denoiser_bytes(family: &Family) -> u64 {
    family
        .components
        .iter()
        .filter(|c| !c.name.starts_with("vae") && !c.name.starts_with("text_encoder"))
        .map(|c| c.bytes())
        .sum()
}

/// Quantize the denoiser to 8 bits (AI Toolkit's `quantize: true`) when its bf16 weights
/// would take more than half of the GPU for a LoRA; a full fine-tune trains the weights and
/// cannot quantize them.
pub fn quantize(a: &Answers) -> Choice<bool> {
    let weights = denoiser_bytes(a.family);
    if !a.lora {
        return choice(
            false,
            "a full fine-tune updates every weight, which must stay in bf16",
        );
    }
    if weights * 2 > a.vram {
        choice(
            true,
            format!(
                "the {} denoiser is {} in bf16, more than half of {} of VRAM: 8-bit weights halve it",
                a.family.title,
                human(weights),
                human(a.vram)
            ),
        )
    } else {
        choice(
            false,
            format!(
                "the denoiser ({}) leaves more than half of {} of VRAM free in bf16",
                human(weights),
                human(a.vram)
            ),
        )
    }
}

/// A larger training resolution is kept when at least this share of the images is larger than
/// the resolution below it: those images get a sharper sample there, while the rest only
/// repeat their own-size sample.
const MEANINGFUL_SHARE: f64 = 0.25;

/// The training resolutions: AI Toolkit's 512/768/1024 ladder up to the model's native
/// resolution, each larger step kept while at least a quarter of the images are larger than
/// the step below it. AI Toolkit never upscales: an image smaller than a resolution trains at
/// its own size there. So a step adds a new, sharper sample only for the images larger than
/// the step below; for the others it repeats the sample they already have.
pub fn resolutions(a: &Answers, facts: &DatasetFacts) -> Choice<Vec<u32>> {
    let native = recipe(a.family).native;
    let mut ladder: Vec<u32> = [512u32, 768, 1024]
        .into_iter()
        .filter(|r| *r <= native)
        .collect();
    if native > 1024 || ladder.is_empty() {
        ladder.push(native);
    }
    let n = facts.sides.len();
    let larger = |r: u32| facts.sides.iter().filter(|s| **s > f64::from(r)).count();
    let share = |count: usize| 100.0 * count as f64 / n.max(1) as f64;
    let mut kept = vec![ladder[0]];
    let mut dropped = None;
    for step in ladder.windows(2) {
        let (below, r) = (step[0], step[1]);
        let count = larger(below);
        if count > 0 && count as f64 >= MEANINGFUL_SHARE * n as f64 {
            kept.push(r);
        } else {
            dropped = Some((r, below, count));
            break;
        }
    }
    let list = kept
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let first = kept[0];
    let why = match (kept.len(), dropped) {
        (1, None) => format!("training at {first} px, the model's native size"),
        (1, Some((r, below, count))) => format!(
            "training at {first} px: only {count} of {n} images ({:.0}%) are larger than {below} px, fewer than a quarter; AI Toolkit never upscales, so at {r} px the others would only repeat their own-size sample",
            share(count)
        ),
        (_, dropped) => {
            let count = larger(first);
            let mut why = format!(
                "training at {list} px: {count} of {n} images ({:.0}%) are larger than {first} px, and each larger resolution gives such images a sharper sample; AI Toolkit never upscales, so an image smaller than a resolution trains at its own size there, repeating its sample",
                share(count)
            );
            if let Some((r, below, count)) = dropped {
                why.push_str(&format!(
                    "; {r} px is left out: only {count} of {n} images ({:.0}%) are larger than {below} px",
                    share(count)
                ));
            }
            why
        }
    };
    choice(kept, why)
}

/// The batch size: what the GPU holds after the denoiser's weights (8-bit when quantized,
/// else bf16; for a full fine-tune also bf16 gradients and two 8-bit AdamW states, 6 bytes
/// per parameter in all), at one sample's activations scaled by the largest resolution's area, rounded
/// down to a power of two, between 1 and 16.
pub fn batch_size(a: &Answers, quantized: bool, largest_resolution: u32) -> Choice<u32> {
    let r = recipe(a.family);
    let weights = denoiser_bytes(a.family);
    let resident = match (a.lora, quantized) {
        (true, true) => weights / 2,
        (true, false) => weights,
        // bf16 weights, bf16 gradients and two 8-bit Adam states: 6 bytes per parameter.
        (false, _) => weights * 3,
    };
    let scale = (f64::from(largest_resolution) / f64::from(r.native)).powi(2);
    let per_sample = (r.activation_gb * 1e9 * scale) as u64;
    let free = a.vram.saturating_sub(resident);
    let fit = free / per_sample.max(1);
    let value = match fit {
        0 => 1,
        n => 1u32 << (63 - n.min(16).leading_zeros()),
    };
    let why = format!(
        "{} of VRAM less {} of resident weights{} leaves {}; one {}px sample takes about {} of activations with gradient checkpointing: {} fit{}",
        human(a.vram),
        human(resident),
        if a.lora {
            ""
        } else {
            " (weights, gradients, 8-bit Adam)"
        },
        human(free),
        largest_resolution,
        human(per_sample),
        fit,
        if fit == 0 {
            "; batch 1 may not fit: quantize, lower the resolution, or use a larger GPU"
        } else {
            ", rounded down to a power of two (at most 16)"
        }
    );
    choice(value, why)
}

/// DataLoader workers: AI Toolkit's default of 2, unless the two would take more than a tenth
/// of RAM. A worker does not copy the model (AI Toolkit's dataset drops it when pickled for a
/// worker: `__getstate__` sets `sd` to `None`); it holds Python and torch, its own copy of the
/// dataset object (one file item per image and resolution) and `prefetch_factor` (2) batches
/// of the cached latents and text embeddings the wizard turns on. larder's loader reads
/// `num_workers` as reader threads in one process.
pub fn num_workers(
    a: &Answers,
    facts: &DatasetFacts,
    resolutions: usize,
    batch: u32,
    largest_resolution: u32,
) -> Choice<u32> {
    let f = a.family;
    let items = (facts.images * resolutions.max(1)) as u64;
    // The file items, with the headers of their path and caption strings.
    let state = items * (FILE_ITEM_BYTES + 2 * 49);
    // bf16 latents of the largest resolution and a caption's embeddings (at the encoders'
    // longest sequence), per sample.
    let sample =
        2 * (f.latent_elements(largest_resolution, largest_resolution) + f.text_elements(u32::MAX));
    let batches = 2 * u64::from(batch) * sample;
    let per_worker = TORCH_WORKER_BYTES + state + batches;
    let detail = format!(
        "a DataLoader worker takes about {}: Python and torch ({}), its copy of the dataset's {items} file items ({}) and 2 prefetched batches of cached latents and text embeddings ({}); it does not copy the model, which AI Toolkit's dataset drops when pickled",
        human(per_worker),
        human(TORCH_WORKER_BYTES),
        human(state),
        human(batches)
    );
    if 2 * per_worker * 10 > a.ram {
        choice(
            0,
            format!(
                "{detail}: two would take more than a tenth of {} of RAM, so the data loads in the main process; served by larder, reader threads share one process",
                human(a.ram)
            ),
        )
    } else {
        choice(
            2,
            format!(
                "{detail}: AI Toolkit's default of 2 takes {} of {} of RAM",
                human(2 * per_worker),
                human(a.ram)
            ),
        )
    }
}

/// Steps: about 100 per image for a LoRA (between 500 and 4,000), 50 per image for a full
/// fine-tune (between 1,000 and 20,000), at the chosen batch size.
pub fn steps(a: &Answers, facts: &DatasetFacts, batch: u32) -> Choice<u32> {
    let (per_image, lo, hi) = if a.lora {
        (100, 500, 4_000)
    } else {
        (50, 1_000, 20_000)
    };
    let raw = facts.images as u64 * per_image / u64::from(batch.max(1));
    let value = raw.clamp(lo, hi) as u32;
    choice(
        value,
        format!(
            "{} images x {per_image} passes / batch {batch} = {raw}, kept within {lo}..{hi}",
            facts.images
        ),
    )
}

/// The learning rate: 1e-4 for a LoRA, 1e-5 for a full fine-tune (AI Toolkit's examples).
pub fn learning_rate(a: &Answers) -> Choice<f64> {
    if a.lora {
        choice(1e-4, "AI Toolkit's LoRA examples train at 1e-4")
    } else {
        choice(
            1e-5,
            "a full fine-tune moves every weight: 1e-5, a tenth of the LoRA rate",
        )
    }
}

/// The VRAM of a GPU named `text` (e.g. "RTX 4090", "A100 80GB"), or a plain number of GB.
pub fn vram_of(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let gb = |v: f64| Some((v * 1e9) as u64);
    if let Ok(v) = t.trim_end_matches("gb").trim().parse::<f64>() {
        return (v > 0.0).then_some(()).and_then(|_| gb(v));
    }
    // An explicit size in the name wins ("a100 40gb", "v100-32gb").
    if let Some(size) = t
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| w.strip_suffix("gb"))
        .find_map(|n| n.parse::<f64>().ok())
    {
        return gb(size);
    }
    const GPUS: &[(&str, f64)] = &[
        ("5090", 32.0),
        ("4090", 24.0),
        ("4080", 16.0),
        ("4070", 12.0),
        ("4060", 8.0),
        ("3090", 24.0),
        ("3080", 10.0),
        ("3070", 8.0),
        ("3060", 12.0),
        ("a6000", 48.0),
        ("a5000", 24.0),
        ("a4000", 16.0),
        ("l40", 48.0),
        ("l4", 24.0),
        ("a100", 80.0),
        ("h100", 80.0),
        ("h200", 141.0),
        ("b200", 192.0),
        ("a10", 24.0),
        ("t4", 16.0),
        ("v100", 16.0),
    ];
    GPUS.iter()
        .find(|(name, _)| t.contains(name))
        .and_then(|(_, v)| gb(*v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use larder::diagnose::family;

    fn answers(name: &str, vram_gb: f64, ram_gb: f64, lora: bool) -> Answers {
        Answers {
            vram: (vram_gb * 1e9) as u64,
            ram: (ram_gb * 1e9) as u64,
            lora,
            family: family(name).expect("family"),
        }
    }

    fn facts(sides: &[f64]) -> DatasetFacts {
        DatasetFacts {
            images: sides.len(),
            bytes: 0,
            sides: sides.to_vec(),
            captioned: sides.len(),
            shapes: (sides.len(), 0, 0),
        }
    }

    #[test]
    fn gpu_names_and_numbers_give_vram() {
        assert_eq!(vram_of("RTX 4090"), Some(24_000_000_000));
        assert_eq!(vram_of("24"), Some(24_000_000_000));
        assert_eq!(vram_of("12.5 GB"), Some(12_500_000_000));
        assert_eq!(vram_of("NVIDIA A100-SXM4-40GB"), Some(40_000_000_000));
        assert_eq!(vram_of("H100 80GB HBM3"), Some(80_000_000_000));
        assert_eq!(vram_of("a potato"), None);
        assert_eq!(vram_of("0"), None);
    }

    #[test]
    fn flux_lora_on_a_24_gb_card_is_quantized() {
        // Flux's transformer: 11.901e9 parameters x 2 bytes = 23.8 GB > 12 GB (half of 24).
        let a = answers("flux", 24.0, 64.0, true);
        assert!(quantize(&a).value);
        // On an 80 GB card it stays in bf16.
        assert!(!quantize(&answers("flux", 80.0, 64.0, true)).value);
        assert!(!quantize(&answers("flux", 24.0, 64.0, false)).value);
    }

    #[test]
    fn batch_size_follows_free_vram_and_resolution() {
        // 24 GB - 11.9 GB of 8-bit weights = 12.1 GB; 4 GB a sample at 1024: 3 fit -> 2.
        let a = answers("flux", 24.0, 64.0, true);
        assert_eq!(batch_size(&a, true, 1024).value, 2);
        // At 512, a quarter of the activations: 12 fit -> 8.
        assert_eq!(batch_size(&a, true, 512).value, 8);
        // 80 GB, bf16 (23.8 GB): 56.2 GB / 4 GB = 14 -> 8.
        assert_eq!(
            batch_size(&answers("flux", 80.0, 64.0, true), false, 1024).value,
            8
        );
        // A full fine-tune of Flux on 24 GB does not fit: batch 1 with a warning.
        let full = batch_size(&answers("flux", 24.0, 64.0, false), false, 1024);
        assert_eq!(full.value, 1);
        assert!(full.why.contains("may not fit"), "{}", full.why);
    }

    #[test]
    fn resolutions_follow_the_share_of_larger_images() {
        let flux = answers("flux", 24.0, 64.0, true);
        assert_eq!(
            resolutions(&flux, &facts(&[2000.0, 1500.0, 1200.0])).value,
            [512, 768, 1024]
        );
        // All three are larger than 512 and two of three larger than 768: at 1024 the 800
        // and 900 px images train at their own, larger, size.
        assert_eq!(
            resolutions(&flux, &facts(&[800.0, 900.0, 700.0])).value,
            [512, 768, 1024]
        );
        assert_eq!(
            resolutions(&flux, &facts(&[700.0, 700.0, 700.0, 900.0, 650.0])).value,
            [512, 768]
        );
        let small = resolutions(&flux, &facts(&[300.0]));
        assert_eq!(small.value, [512]);
        assert!(small.why.contains("only 0 of 1 images"), "{}", small.why);
        let sd15 = answers("sd15", 24.0, 64.0, true);
        let native = resolutions(&sd15, &facts(&[2000.0]));
        assert_eq!(native.value, [512]);
        assert!(native.why.contains("native size"), "{}", native.why);
        let qwen = answers("qwen-image", 80.0, 256.0, true);
        assert_eq!(
            resolutions(&qwen, &facts(&[2000.0])).value,
            [512, 768, 1024, 1328]
        );
    }

    #[test]
    fn wizard_chose_512_when_9_of_22_images_were_larger() {
        // Regression: 13 small images and 9 of 1024 px gave [512], "larger sizes only repeat
        // smaller buckets" (the median was below 768). 41% of the images are larger than 512
        // and 768 px: both larger resolutions give them a sharper sample.
        let mut sides = vec![400.0; 13];
        sides.extend([1024.0; 9]);
        let r = resolutions(&answers("flux", 24.0, 64.0, true), &facts(&sides));
        assert_eq!(r.value, [512, 768, 1024]);
        assert!(
            r.why.starts_with(
                "training at 512, 768, 1024 px: 9 of 22 images (41%) are larger than 512 px"
            ),
            "{}",
            r.why
        );
        assert!(!r.why.contains("only repeat smaller buckets"), "{}", r.why);
        // 5 of 22 (23%) is below a quarter: 512 only, and the reason says how many.
        let mut sides = vec![400.0; 17];
        sides.extend([1024.0; 5]);
        let r = resolutions(&answers("flux", 24.0, 64.0, true), &facts(&sides));
        assert_eq!(r.value, [512]);
        assert!(r.why.contains("only 5 of 22 images (23%)"), "{}", r.why);
    }

    #[test]
    fn workers_were_set_from_model_copies() {
        // Regression: 64 GB of RAM with Flux gave num_workers 0 because "3 copies of the
        // model" did not fit; workers do not copy the model.
        let f = facts(&[1000.0; 20]);
        let w = num_workers(&answers("flux", 24.0, 64.0, true), &f, 3, 2, 1024);
        assert_eq!(w.value, 2);
        assert!(w.why.contains("does not copy the model"), "{}", w.why);
        assert!(!w.why.contains("copies of"), "{}", w.why);
        // The figure: torch, 60 file items, and 2 batches of 2 Flux samples at 1024 px (a
        // 16x128x128 latent and 512x4096 + 768 text values, 2 bytes each).
        let sample = 2 * (16 * 128 * 128 + 512 * 4096 + 768);
        let per_worker = TORCH_WORKER_BYTES + 60 * (FILE_ITEM_BYTES + 98) + 2 * 2 * sample;
        assert!(
            w.why
                .contains(&format!("takes about {}", human(per_worker))),
            "{} / {}",
            w.why,
            human(per_worker)
        );
        // A machine where two workers take more than a tenth of RAM loads in the main
        // process.
        assert_eq!(
            num_workers(&answers("sd15", 8.0, 4.0, true), &f, 1, 1, 512).value,
            0
        );
        assert_eq!(
            num_workers(&answers("sd15", 8.0, 16.0, true), &f, 1, 1, 512).value,
            2
        );
    }

    #[test]
    fn steps_scale_with_images_within_bounds() {
        let a = answers("flux", 24.0, 64.0, true);
        assert_eq!(steps(&a, &facts(&[1000.0; 20]), 2).value, 1000);
        assert_eq!(steps(&a, &facts(&[1000.0; 2]), 1).value, 500);
        assert_eq!(steps(&a, &facts(&[1000.0; 500]), 1).value, 4000);
    }
}
