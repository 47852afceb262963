//! Recommendations drawn from an estimate: each rule states what it saw and why its advice
//! helps, with figures from the estimate and from larder's measured codec sizes.

use super::estimate::{Estimate, latent_bytes_per_value};
use super::families::family;
use crate::size::human;
use crate::store::codec::Codec;

/// How much a piece of advice matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Worth knowing.
    Info,
    /// Likely to cost speed or memory.
    Warn,
}

/// One recommendation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Advice {
    /// How much it matters.
    pub level: Level,
    /// The rule that produced it, e.g. `"store-exceeds-ram"`.
    pub rule: &'static str,
    /// What to do.
    pub advice: String,
    /// Why: the figures the rule saw.
    pub reason: String,
}

/// The saving of storing latents in `to` rather than `from`, from measured sizes, in percent.
fn saving(from: Codec, to: Codec) -> f64 {
    100.0 * (1.0 - latent_bytes_per_value(to) / latent_bytes_per_value(from))
}

/// The advice for `estimate` on a machine with `ram` bytes of memory (when known).
pub fn advise(estimate: &Estimate, ram: Option<u64>) -> Vec<Advice> {
    let mut out = Vec::new();
    let fields = &estimate.workload.fields;
    let bytes_of = |name: &str| {
        fields
            .iter()
            .filter(|f| f.name == name)
            .map(|f| f.stored_bytes)
            .sum::<u64>()
    };
    let int8_zstd = Codec::parse("int8+zstd").unwrap_or(Codec::BF16);
    let latent_saving = saving(Codec::BF16, int8_zstd);
    let fam = estimate.family.as_deref().and_then(family);

    if let Some(ram) = ram.filter(|r| *r > 0) {
        let ratio = estimate.store_bytes as f64 / ram as f64;
        let seen = format!(
            "the store holds {} and this machine has {} of RAM",
            human(estimate.store_bytes),
            human(ram)
        );
        if ratio > 1.0 {
            let mut fixes = Vec::new();
            if bytes_of("latent") > 0 {
                fixes.push(format!(
                    "store latents as int8+zstd (-{latent_saving:.0}% against bf16, measured by `larder bench-prepare`)"
                ));
            }
            if let Some(f) = fam
                && bytes_of("pixels") > 0
            {
                let latent =
                    f64::from(f.latent_channels) * 2.0 / f64::from(f.vae_factor * f.vae_factor);
                fixes.push(format!(
                    "cache latents instead of pixels (cache_latents_to_disk: a {} latent in bf16 is {:.0}% of its RGB pixels)",
                    f.title,
                    100.0 * latent / 3.0
                ));
            }
            fixes.push("or serve from a fast local NVMe disk and expect every epoch to read the store from it".into());
            out.push(Advice {
                level: Level::Warn,
                rule: "store-exceeds-ram",
                advice: format!("store is {ratio:.1}x RAM: {}", fixes.join("; ")),
                reason: format!(
                    "{seen}: the page cache cannot keep it, so every epoch reads it from disk"
                ),
            });
        } else if ratio >= 0.5 {
            out.push(Advice {
                level: Level::Warn,
                rule: "store-near-ram",
                advice: format!(
                    "the store takes {:.0}% of RAM as page cache: keep other RAM users (model offloading, pinned buffers) below the rest, or shrink latents with int8+zstd (-{latent_saving:.0}%)",
                    100.0 * ratio
                ),
                reason: seen,
            });
        } else {
            out.push(Advice {
                level: Level::Info,
                rule: "store-fits",
                advice: format!(
                    "the store stays hot in the page cache ({:.1}% of RAM): after the first epoch, reads cost no disk I/O",
                    100.0 * ratio
                ),
                reason: seen,
            });
        }
    }

    let dl = &estimate.dataloader;
    if dl.workers > 0 {
        let over_ram = ram.is_some_and(|r| dl.total > r);
        out.push(Advice {
            level: if over_ram { Level::Warn } else { Level::Info },
            rule: "worker-memory",
            advice: format!(
                "{} DataLoader workers hold {} each ({} in all); the model is not among it. larder's {} reader threads share one process and one mapped store",
                dl.workers,
                human(dl.per_worker),
                human(u64::from(dl.workers) * dl.per_worker),
                estimate.larder.threads
            ),
            reason: format!(
                "each worker is its own process: Python and torch ({}), its copy of the dataset object ({} file items: {}), the largest image it decodes ({}) and its prefetched batches ({}). AI Toolkit's dataset drops the model when pickled for a spawned worker (__getstate__ sets sd to None), and a forked worker shares the model's pages{}",
                human(dl.runtime_per_worker),
                estimate.workload.items,
                human(dl.dataset_state_per_worker),
                human(dl.decode_per_worker),
                human(dl.batches_per_worker),
                if over_ram {
                    format!("; {} in all against {} of RAM", human(dl.total), human(ram.unwrap_or(0)))
                } else {
                    String::new()
                }
            ),
        });
    }
    if dl.workers > 0 && dl.caches_per_worker > 0 {
        out.push(Advice {
            level: Level::Warn,
            rule: "in-memory-cache-copies",
            advice: format!(
                "use cache_latents_to_disk (or larder's store) rather than cache_latents: the in-memory cache is copied into each of {} workers (+{})",
                dl.workers,
                human(u64::from(dl.workers) * dl.caches_per_worker)
            ),
            reason: format!(
                "cache_latents keeps {} of latents in the dataset object; reading Python objects in a forked worker touches their reference counts, which copies their pages (pytorch issue 13246)",
                human(dl.caches_per_worker)
            ),
        });
    }
    let text = bytes_of("text_embedding");
    let images: u64 = fields
        .iter()
        .filter(|f| f.name != "text_embedding")
        .map(|f| f.stored_bytes)
        .sum();
    if text > 0 && text > 2 * images {
        let per = fields
            .iter()
            .find(|f| f.name == "text_embedding")
            .map_or(0.0, |f| f.bytes_per_caption);
        out.push(Advice {
            level: Level::Info,
            rule: "text-embeddings-dominate",
            advice: format!(
                "store text embeddings with an 8-bit codec (int8: -{:.0}%), or encode captions on the fly when they are few",
                saving(Codec::BF16, Codec::parse("int8").unwrap_or(Codec::BF16))
            ),
            reason: format!(
                "text embeddings take {} against {} of image data: {} per distinct caption ({} captions)",
                human(text),
                human(images),
                human(per.round() as u64),
                estimate.workload.distinct_captions
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::estimate::{EstimateOptions, FieldEstimate, Origin, Workload, estimate};
    use crate::plan::Bucket;

    fn workload(latent: u64, text: u64, in_memory: bool) -> Workload {
        let field = |name: &str, bytes: u64, per_pixel: f64| FieldEstimate {
            name: name.into(),
            origin: Origin::Plan,
            entries: 1000,
            stored_bytes: bytes,
            decoded_bytes: bytes,
            bytes_per_pixel: per_pixel,
            bytes_per_caption: 0.0,
            in_memory: in_memory && name == "latent",
        };
        Workload {
            items: 1000,
            buckets: vec![(
                Bucket {
                    width: 1024,
                    height: 1024,
                },
                1000,
            )],
            distinct_captions: 1000,
            item_text_bytes: 0,
            field_columns: 2,
            catalog_bytes: None,
            shard_bytes: None,
            largest_decode_bytes: 0,
            fields: vec![
                field("latent", latent, 0.5),
                field("text_embedding", text, 0.0),
            ],
        }
    }

    fn rules(advice: &[Advice]) -> Vec<&'static str> {
        advice.iter().map(|a| a.rule).collect()
    }

    #[test]
    fn a_store_larger_than_ram_gets_the_measured_int8_zstd_saving() {
        let options = EstimateOptions {
            workers: 0,
            ..EstimateOptions::default()
        };
        let e = estimate(workload(3_200_000_000, 0, false), &options);
        let advice = advise(&e, Some(1_000_000_000));
        assert_eq!(rules(&advice), ["store-exceeds-ram"]);
        // 1 - 139,091 / 524,288 bytes per Flux latent = 73.5%.
        assert!(
            advice[0]
                .advice
                .starts_with("store is 3.2x RAM: store latents as int8+zstd (-73%"),
            "{}",
            advice[0].advice
        );
    }

    #[test]
    fn rules_fire_on_their_own_conditions_only() {
        let flux = EstimateOptions {
            family: crate::diagnose::family("flux"),
            ..EstimateOptions::default()
        };
        // 600 MB of a 1 GB machine: near RAM; the workers' memory is reported; the in-memory
        // cache is copied; text embeddings (5x the latents) dominate.
        let e = estimate(workload(100_000_000, 500_000_000, true), &flux);
        let advice = advise(&e, Some(1_000_000_000));
        assert_eq!(
            rules(&advice),
            [
                "store-near-ram",
                "worker-memory",
                "in-memory-cache-copies",
                "text-embeddings-dominate"
            ]
        );
        // Without workers, no worker copies; with plenty of RAM, the store fits.
        let serial = EstimateOptions { workers: 0, ..flux };
        let e = estimate(workload(100_000_000, 0, true), &serial);
        assert_eq!(rules(&advise(&e, Some(64_000_000_000))), ["store-fits"]);
        assert!(advise(&e, None).is_empty());
    }

    #[test]
    fn workers_were_said_to_unpickle_the_model() {
        // Regression: diagnose claimed every spawned worker unpickles the model (Flux: 33.7 GB
        // a worker). AI Toolkit's dataset drops it when pickled; a worker holds its runtime,
        // its copy of the dataset object and its buffers.
        let flux = EstimateOptions {
            family: crate::diagnose::family("flux"),
            workers: 2,
            ..EstimateOptions::default()
        };
        let mut w = workload(100_000_000, 0, false);
        w.item_text_bytes = 50_000;
        w.largest_decode_bytes = 1_000_000;
        let e = estimate(w, &flux);
        let dl = &e.dataloader;
        let state = 1000 * (crate::diagnose::FILE_ITEM_BYTES + 2 * 49) + 50_000;
        assert_eq!(dl.dataset_state_per_worker, state);
        assert_eq!(dl.decode_per_worker, 1_000_000);
        // The largest batch: one 1024x1024 item at 0.5 bytes a pixel, twice (prefetch_factor).
        let batches = 2 * 1024 * 1024 / 2;
        assert_eq!(dl.batches_per_worker, batches);
        assert_eq!(
            dl.per_worker,
            crate::diagnose::TORCH_WORKER_BYTES + state + 1_000_000 + batches
        );
        assert!(dl.per_worker < e.model_bytes / 10, "{dl:?}");
        let advice = advise(&e, Some(64_000_000_000));
        let workers = advice
            .iter()
            .find(|a| a.rule == "worker-memory")
            .expect("worker advice");
        assert_eq!(workers.level, Level::Info);
        assert!(!workers.advice.contains("unpickle"), "{}", workers.advice);
        assert!(
            workers.advice.contains("the model is not among it"),
            "{}",
            workers.advice
        );
        assert!(
            workers.reason.contains("sets sd to None"),
            "{}",
            workers.reason
        );
        // On a machine too small for the workers, it is a warning.
        let small = advise(&e, Some(500_000_000));
        assert!(
            small
                .iter()
                .any(|a| a.rule == "worker-memory" && a.level == Level::Warn)
        );
    }
}
