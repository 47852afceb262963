//! Where a store is: a local folder or an object-storage URL, decided in one place.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a store lives: a local folder, or a URL of object storage (`s3://`, `gs://`, `az://`,
/// `http(s)://`; see [`is_url`](super::is_url)).
///
/// Every entry point that takes "a folder or a URL" (prepare, merge, the CLI and the Python
/// bindings) parses its argument with [`Location::parse`], so that they agree on which
/// strings are remote. Paths convert into [`Location::Local`] as they are.
///
/// ```
/// use larder::Location;
///
/// assert_eq!(Location::parse("s3://bucket/faces"), Location::Url("s3://bucket/faces".into()));
/// assert_eq!(Location::parse("stores/faces"), Location::Local("stores/faces".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine.
    Local(PathBuf),
    /// A URL of object storage.
    Url(String),
}

impl Location {
    /// A URL larder reads as object storage becomes [`Location::Url`]; anything else is a
    /// local path.
    pub fn parse(text: &str) -> Location {
        if super::is_url(text) {
            Location::Url(text.to_owned())
        } else {
            Location::Local(PathBuf::from(text))
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Url(url) => f.write_str(url),
        }
    }
}

impl From<&str> for Location {
    fn from(text: &str) -> Location {
        Location::parse(text)
    }
}

impl From<&String> for Location {
    fn from(text: &String) -> Location {
        Location::parse(text)
    }
}

impl From<String> for Location {
    fn from(text: String) -> Location {
        Location::parse(&text)
    }
}

// A path is a path even when it reads like a URL: who holds a `Path` chose a local folder.
impl From<&Path> for Location {
    fn from(path: &Path) -> Location {
        Location::Local(path.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Location {
        Location::Local(path.clone())
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Location {
        Location::Local(path)
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Location {
        location.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_parsed_and_paths_stay_local() {
        assert_eq!(Location::from("gs://b/x"), Location::Url("gs://b/x".into()));
        assert_eq!(Location::from("s3://"), Location::Local("s3://".into()));
        assert_eq!(
            Location::from(Path::new("s3://b/x")),
            Location::Local("s3://b/x".into())
        );
        assert_eq!(Location::parse("s3://b/x").to_string(), "s3://b/x");
    }
}
