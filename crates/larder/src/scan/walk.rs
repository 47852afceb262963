//! Listing a dataset folder's images, in parallel, in a stable order.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Finding, FindingKind};

/// Extensions of the images larder reads (compared case-insensitively), as AI Toolkit lists them.
pub(crate) const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Image extensions that users put in dataset folders but neither AI Toolkit nor larder reads;
/// they are reported so that nobody wonders where the images went.
const OTHER_IMAGE_EXTENSIONS: [&str; 10] = [
    "gif", "bmp", "tif", "tiff", "avif", "heic", "heif", "jxl", "jp2", "tga",
];

/// AI Toolkit's video extensions (`video_extensions` in `toolkit/data_loader.py`): read beside
/// images in a video dataset, reported in any other.
const VIDEO_EXTENSIONS: [&str; 8] = ["mp4", "avi", "mov", "webm", "mkv", "wmv", "m4v", "flv"];

/// Returns true if and only if `path` has one of AI Toolkit's video extensions (any case).
pub(crate) fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Folders that hold AI Toolkit's own caches and generated controls, never training images.
const SKIPPED_DIRS: [&str; 4] = [
    "_latent_cache",
    "_t_e_cache",
    "_clip_vision_cache",
    "_controls",
];

/// What a folder walk found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Image files, sorted by path.
    pub images: Vec<PathBuf>,
    /// Problems met on the way (unreadable folders, unsupported image types).
    pub findings: Vec<Finding>,
}

/// Lists the images under `root` (and the videos, when `videos`), recursively, skipping hidden entries, AI Toolkit's cache
/// folders and the folders in `exclude` (mask or control folders nested inside the dataset).
///
/// Subfolders are read in parallel, which matters on network file systems where each
/// directory read is a round trip. The result is sorted so that the scan, and everything
/// planned from it, does not depend on the order in which the file system lists entries.
pub(crate) fn list_images(
    root: &Path,
    exclude: &[PathBuf],
    dataset: usize,
    videos: bool,
) -> Listing {
    let out = Mutex::new(Listing::default());
    let walk = Walk {
        exclude,
        dataset,
        videos,
        out: &out,
    };
    rayon::scope(|s| walk_dir(s, root.to_path_buf(), walk));
    let mut listing = out
        .into_inner()
        .unwrap_or_else(|poison| poison.into_inner());
    listing.images.sort();
    listing.findings.sort_by(|a, b| a.path.cmp(&b.path));
    listing
}

/// What every folder of one walk shares.
#[derive(Clone, Copy)]
struct Walk<'s> {
    exclude: &'s [PathBuf],
    dataset: usize,
    videos: bool,
    out: &'s Mutex<Listing>,
}

fn walk_dir<'s>(scope: &rayon::Scope<'s>, dir: PathBuf, walk: Walk<'s>) {
    let Walk {
        exclude,
        dataset,
        videos,
        out,
    } = walk;
    let record = |f: Finding| {
        out.lock()
            .unwrap_or_else(|p| p.into_inner())
            .findings
            .push(f)
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            record(Finding::new(
                dataset,
                FindingKind::Unreadable,
                &dir,
                format!("cannot list folder: {e}"),
            ));
            return;
        }
    };
    let mut images = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                record(Finding::new(
                    dataset,
                    FindingKind::Unreadable,
                    &dir,
                    format!("cannot list folder: {e}"),
                ));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            record(Finding::new(
                dataset,
                FindingKind::Unsupported,
                &entry.path(),
                "file name is not valid UTF-8".into(),
            ));
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // file_type() does not follow symbolic links: linked folders are not entered (as in
        // os.walk), linked files are read through the link.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name) && !exclude.iter().any(|x| same_dir(x, &path)) {
                scope.spawn(move |s| walk_dir(s, path, walk));
            }
            continue;
        }
        let ext = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some(e) if IMAGE_EXTENSIONS.contains(&e) => images.push(path),
            Some(e) if OTHER_IMAGE_EXTENSIONS.contains(&e) => record(Finding::new(
                dataset,
                FindingKind::Unsupported,
                &path,
                format!(".{e} images are not read; convert them to JPEG, PNG or WebP"),
            )),
            Some(e) if VIDEO_EXTENSIONS.contains(&e) && videos => images.push(path),
            Some(e) if VIDEO_EXTENSIONS.contains(&e) => record(Finding::new(
                dataset,
                FindingKind::Unsupported,
                &path,
                "videos are read in video datasets only (`num_frames` above 1 or `auto_frame_count`), as in AI Toolkit; the file is left out".into(),
            )),
            _ => {}
        }
    }
    out.lock()
        .unwrap_or_else(|p| p.into_inner())
        .images
        .extend(images);
}

/// Returns true if and only if `a` and `b` name the same folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// The stem → path map of the images directly inside `dir`, for pairing masks and controls.
/// When several files share a stem, the first extension of `extensions` wins, as in AI Toolkit.
pub(crate) fn stem_index(
    dir: &Path,
    extensions: &[&str],
) -> std::io::Result<std::collections::HashMap<String, PathBuf>> {
    let mut best: std::collections::HashMap<String, (usize, PathBuf)> =
        std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        // AI Toolkit tries lowercase extensions only; larder also takes `.PNG` and friends.
        let Some(rank) = extensions.iter().position(|x| x.eq_ignore_ascii_case(ext)) else {
            continue;
        };
        let slot = best
            .entry(stem.to_owned())
            .or_insert((usize::MAX, PathBuf::new()));
        if rank < slot.0 {
            *slot = (rank, path);
        }
    }
    Ok(best.into_iter().map(|(k, (_, p))| (k, p)).collect())
}
