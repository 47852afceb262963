//! Clips' audio in prepare (`do_audio`): each clip's track decoded once, cut to the time its
//! chosen frames span and stretched to its training duration (`video::audio`), stored as
//! `audio` ([2, L] f32) with its rate as `audio.sample_rate` (a scalar), both in one group so
//! that they are committed together.

use std::collections::HashSet;

use rayon::prelude::*;

use super::Target;
use super::items::ItemPlan;
use super::writer::{Produced, Written, guarded, stored_entry, with_writer};
use crate::scan::{Finding, FindingKind};
use crate::store::catalog::Catalog;
use crate::store::codec::{Codec, Values};
use crate::video::audio::{AUDIO_PIPELINE, decode_audio};
use crate::{Error, Result};

/// The audio fields of an item: the waveform, then its rate.
pub(super) const FIELDS: [&str; 2] = ["audio", "audio.sample_rate"];

/// Decodes and stores the audio entries of `items` that `stored` lacks (each once: `seen`
/// collects every key referenced). Returns the catalog and how many entries it set out to
/// compute.
pub(super) fn run_audio<'p>(
    catalog: Catalog,
    target: &Target<'_>,
    items: &'p [ItemPlan<'_>],
    stored: &HashSet<String>,
    seen: &mut HashSet<&'p str>,
    done: &mut Written,
) -> Result<(Catalog, usize)> {
    let mut jobs: Vec<&ItemPlan<'_>> = Vec::new();
    for item in items {
        let Some(keys) = &item.audio else { continue };
        let new = keys
            .iter()
            .fold(false, |new, (_, key)| seen.insert(key) | new);
        if new && keys.iter().any(|(_, key)| !stored.contains(key)) {
            jobs.push(item);
        }
    }
    if jobs.is_empty() {
        return Ok((catalog, 0));
    }
    let options = target.options;
    let bar = crate::progress::bar(
        options.progress,
        jobs.len(),
        1,
        "{bar:30} {pos}/{len} audio {per_sec} ETA {eta}",
    );
    let (catalog, written) = with_writer(catalog, target.out, options, target.sink, |tx| {
        let threads = rayon::current_num_threads().max(1);
        for part in jobs.chunks(threads * 4) {
            let groups: Vec<Vec<Produced>> = part.par_iter().map(|item| produce(item)).collect();
            bar.inc(part.len() as u64);
            if tx.send(groups).is_err() {
                break;
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    done.absorb(written);
    Ok((catalog, jobs.len() * FIELDS.len()))
}

/// The entry keys of a clip's audio fields: the clip's content (its file and chosen frames),
/// the dataset's audio and frame settings, and the pipeline.
pub(super) fn audio_keys(item_content: &str, params: &str) -> Vec<(String, String)> {
    FIELDS
        .iter()
        .map(|field| {
            let key = crate::store::key::entry_key(
                "clip audio",
                field,
                item_content,
                params,
                &Codec::RAW_F32.name(),
                AUDIO_PIPELINE,
            );
            ((*field).to_owned(), key)
        })
        .collect()
}

/// One clip's audio entries, or why they could not be made (the item is then left out).
fn produce(item: &ItemPlan<'_>) -> Vec<Produced> {
    let keys = item.audio.as_deref().unwrap_or_default();
    let path = &item.image.path;
    let failed = |kind: FindingKind, why: String| -> Vec<Produced> {
        (keys.iter())
            .map(|(_, key)| Produced::Failed {
                key: key.clone(),
                finding: Finding::new(item.planned.dataset, kind, path, why.clone()),
            })
            .collect()
    };
    let (Some(rule), Some(video), Some(frames)) =
        (item.dataset.audio, item.image.video, item.frames.as_deref())
    else {
        return failed(FindingKind::Corrupt, "not a clip with audio".into());
    };
    let track = match guarded(path, || decode_audio(path)) {
        Ok(track) => track,
        Err(e) => return failed(FindingKind::Corrupt, e.to_string()),
    };
    let rate = track.rate;
    let Some(stereo) = rule.window(track, frames, video.fps, &item.dataset.frames) else {
        return failed(
            FindingKind::Truncated,
            format!(
                "its audio track ends before its chosen frames ({}..={} at {} fps) begin; the clip is left out",
                frames[0],
                frames[frames.len() - 1],
                video.fps
            ),
        );
    };
    let samples = stereo[0].len();
    let waveform: Vec<f32> = stereo.concat();
    let entries = [
        (Values::F32(&waveform), vec![2, samples]),
        (Values::F32(&[rate as f32]), Vec::new()),
    ];
    let mut out = Vec::with_capacity(2);
    for ((field, key), (values, shape)) in keys.iter().zip(entries) {
        let name = format!("{}/{field}", item.item_key);
        match stored_entry(key, name, Codec::RAW_F32, values, shape) {
            Ok(entry) => out.push(entry),
            Err(e) => return failed(FindingKind::Corrupt, Error::to_string(&e)),
        }
    }
    out
}
